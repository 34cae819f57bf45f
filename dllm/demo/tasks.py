"""The demo's synthetic tasks, which live in :mod:`dllm.tasks` (shared with ``dllm eval`` and post-training
rewards); this module re-exports them so ``from dllm.demo.tasks import ...`` keeps working."""

from dllm.tasks import DEMO_ALPHABET, AddNumbers, CountLetter, ReverseWord, SortDigits, default_tasks  # noqa: F401
from dllm.tasks import heldout_bucket, is_heldout, iter_examples, make_examples, to_messages  # noqa: F401
from dllm.tasks import Task, make_messages_dataset  # noqa: F401
