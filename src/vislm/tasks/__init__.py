"""Tasks: captioning, retrieval and VQA, each owning its data, batching and evaluation."""

from vislm.tasks.caption import CaptionTask
from vislm.tasks.retrieval import RetrievalTask
from vislm.tasks.vqa import VQATask

TASKS = {task.name: task for task in (CaptionTask, RetrievalTask, VQATask)}

__all__ = ["TASKS", "CaptionTask", "RetrievalTask", "VQATask"]
