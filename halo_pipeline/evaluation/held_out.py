"""The documents of an eval step's lm-eval tasks, as held-out items that no train step may train on.

A local task (the shipped `conf/eval_tasks/`, or an `include_path` directory) is read through lm-eval itself, so
that each document's prompt is what the model is asked (`doc_to_text`) and its answer what is scored
(`doc_to_target`, the choices). One of lm-eval's own tasks is read only when its dataset is on disk: the hub is
not asked (offline), and a task that cannot be read is reported as not checked rather than failing the run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from halo_pipeline.data.decontaminate import Item, Loader

_offline_lock = threading.Lock()


def _dirs(spec: dict[str, Any]) -> list[Path]:
    from halo_pipeline.evaluation.harness import shipped_tasks_dir

    return [shipped_tasks_dir(), *(Path(p) for p in spec.get("include") or [])]


def fingerprint(spec: dict[str, Any]) -> str:
    """A local task: the digest of its directory; one of lm-eval's: its name and lm-eval's version."""
    from halo_pipeline.engine.execute import external_digest, library_versions
    from halo_pipeline.evaluation.harness import local_task_names

    local = local_task_names(_dirs(spec))
    task = spec["task"]
    if task in local:
        return f"local:{external_digest(local[task].parent)}"
    return f"lm-eval {library_versions(('lm-eval',))['lm-eval']}:{task}"


def load(spec: dict[str, Any]) -> list[Item]:
    """Every evaluated document of the task (its test split, else validation): prompt, target and choices."""
    from halo_pipeline.evaluation.harness import local_task_names, stage_tasks

    task = spec["task"]
    dirs = _dirs(spec)
    local = local_task_names(dirs)
    with tempfile.TemporaryDirectory(prefix="halo-held-out-") as tmp, _offline():
        from lm_eval.tasks import TaskManager, get_task_dict

        manager = TaskManager(include_path=[str(stage_tasks(dirs, Path(tmp) / "tasks"))], include_defaults=task not in local)
        if task not in manager.all_tasks:
            raise ValueError(f"unknown lm-eval task {task!r}")
        items: list[Item] = []
        for name, obj in _leaves(get_task_dict([task], manager)):
            for i, doc in enumerate(obj.eval_docs):
                items.append(_item(spec["label"], name, obj, doc, i))
    return items


def _leaves(tasks: dict[Any, Any]) -> Iterator[tuple[str, Any]]:
    for name, value in tasks.items():
        if isinstance(value, dict):
            yield from _leaves(value)
        elif value is not None and hasattr(value, "eval_docs"):
            yield str(getattr(name, "group_name", name)), value


def _item(label: str, name: str, task: Any, doc: dict[str, Any], number: int) -> Item:
    prompt = task.doc_to_text(doc)
    texts = [str(prompt)] if prompt is not None else []
    choices: list[str] = []
    with contextlib.suppress(Exception):  # only multiple-choice tasks have choices
        if getattr(task, "OUTPUT_TYPE", "") == "multiple_choice" or task.config.doc_to_choice is not None:
            choices = [str(c) for c in task.doc_to_choice(doc)]
    target = task.doc_to_target(doc)
    if isinstance(target, int) and 0 <= target < len(choices):
        texts.append(choices[target])
    elif isinstance(target, str):
        texts.append(target)
    texts += choices
    texts += [v for v in doc.values() if isinstance(v, str)]  # the document's own fields (question, passage, answer)
    return Item(label, f"{name}/{doc.get('id', number)}", str(prompt) if prompt is not None else None, texts)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The hub is not asked while the task's documents load: readable offline, or not checked."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    with _offline_lock:
        before = {n: os.environ.get(n) for n in names}
        os.environ.update(dict.fromkeys(names, "1"))
        patched = []
        for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
            with contextlib.suppress(ImportError, AttributeError):
                mod = __import__(module, fromlist=[attr])
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, True)
        try:
            yield
        finally:
            for mod, attr, value in patched:
                setattr(mod, attr, value)
            for n, v in before.items():
                if v is None:
                    os.environ.pop(n, None)
                else:
                    os.environ[n] = v


LOADER: Loader = (fingerprint, load)
