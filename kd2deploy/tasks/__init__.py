"""Tasks: one folder each (an adapter the shared stages call), one registry line each below."""

from kd2deploy.tasks.base import TASKS, Capabilities, TaskAdapter, task_of
from kd2deploy.tasks.causal_lm.adapter import CausalLMTask
from kd2deploy.tasks.tensor.adapter import TensorTask
from kd2deploy.tasks.text.adapter import TextTask

TASKS.register("tensor")(TensorTask)
TASKS.register("text")(TextTask)
TASKS.register("causal-lm")(CausalLMTask)

__all__ = ["TASKS", "Capabilities", "TaskAdapter", "task_of"]
