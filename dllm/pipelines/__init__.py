"""Model families: what differs for one family (wrapper, collator, trainer hook). Leaves: nothing in ``dllm``
imports a pipeline except :mod:`dllm.auto`, whose table maps a checkpoint's ``model_type`` to its class."""
