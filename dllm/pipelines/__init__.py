"""Model families. Each registers its masked-LM class with :func:`dllm.core.models.register_masked_lm`."""

import dllm.pipelines.gemma2  # noqa: F401
import dllm.pipelines.llama3  # noqa: F401
