"""Re-exports for the public import path ``dllm.data.utils.load_sft_dataset``.

The code lives in :mod:`dllm.data.loading` (the loader and the :data:`NAMED_FORMATS` registry) and
:mod:`dllm.data.spec` (the ``name_or_path[train:N,test:M]`` grammar); this module only keeps the older
import path working, e.g.::

    from dllm.data.utils import load_sft_dataset
    dataset = load_sft_dataset("examples/data/alpaca_example.json[train:30,test:5]")
"""

from dllm.data.loading import NAMED_FORMATS, load_sft_dataset, load_source_splits
from dllm.data.spec import DatasetSource, parse_dataset_spec

__all__ = ["NAMED_FORMATS", "DatasetSource", "load_sft_dataset", "load_source_splits", "parse_dataset_spec"]
