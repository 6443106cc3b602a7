"""Validating and executing prompts, with upstream's caching rules.

What qpatch depends on, as upstream 0.14.1 does it:
- Nodes run inside `torch.inference_mode()`: no autograd graph is kept unless a node turns
  autograd back on itself (then, and only then, checkpointing its model call saves memory).
- A node's outputs are reused when its signature is unchanged: its class, the value its
  `IS_CHANGED` returns (looked up on the class and called as `Class.IS_CHANGED(**inputs)`
  with the node's constant inputs) and its inputs, with linked inputs replaced by the
  signatures of the nodes they come from. NaN never equals itself, so an `IS_CHANGED`
  returning NaN, raising, or defined without `@classmethod` (called on the class it misses
  `self`) makes the node run on every prompt.
- Node instances are kept per node id between prompts; `POST /free` with `free_memory`
  drops them and every cached output (the executor is reset).
- Classic caching (the default) keeps the outputs of the nodes of the last prompt only;
  `--cache-none` keeps nothing; `--cache-lru N` keeps the last N node runs.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management as mm
import nodes
import torch
from comfy.cli_args import args

Prompt = dict[str, dict[str, Any]]


# ------------------------------------------------------------------------------ validation


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _check_value(name: str, spec: tuple[Any, ...], value: Any) -> tuple[Any, dict | None]:
    """Convert a constant input as upstream does (INT, FLOAT, STRING, BOOLEAN, a list of
    choices); return the value and an error, if any."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    info = {"input_name": name, "input_config": list(spec), "received_value": value}
    if isinstance(kind, list):
        if value not in kind:
            return value, _error(
                "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}", **info
            )
        return value, None
    convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(kind)
    if convert is None:
        return value, None
    try:
        value = convert(value)
    except (TypeError, ValueError) as e:
        return value, _error(
            "invalid_input_type",
            f"Failed to convert an input value to a {kind} value",
            f"{name}, {value}, {e}",
            **info,
        )
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return value, _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {opts['min']}",
                name,
                **info,
            )
        if "max" in opts and value > opts["max"]:
            return value, _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {opts['max']}",
                name,
                **info,
            )
    return value, None


def _node_errors(prompt: Prompt, node_id: str) -> list[dict[str, Any]]:
    node = prompt[node_id]
    cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
    spec = cls.INPUT_TYPES()
    given = node.get("inputs", {})
    errors = []
    for group in ("required", "optional"):
        for name, input_spec in (spec.get(group) or {}).items():
            if name not in given:
                if group == "required":
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            input_name=name,
                        )
                    )
                continue
            value = given[name]
            if _is_link(value):
                source = str(value[0])
                if source not in prompt:
                    errors.append(
                        _error(
                            "invalid_link",
                            "Linked node does not exist",
                            f"{name}: {source}",
                            input_name=name,
                        )
                    )
                continue
            value, err = _check_value(name, input_spec, value)
            if err:
                errors.append(err)
            else:
                given[name] = value
    return errors


def _ancestors(prompt: Prompt, node_id: str, seen: set[str]) -> None:
    if node_id in seen:
        return
    seen.add(node_id)
    for value in prompt[node_id].get("inputs", {}).values():
        if _is_link(value) and str(value[0]) in prompt:
            _ancestors(prompt, str(value[0]), seen)


def validate_prompt(prompt: Any) -> tuple[bool, dict[str, Any] | None, list[str], dict]:
    """(valid, error, output node ids, node_errors), as upstream's /prompt answers them."""
    if not isinstance(prompt, dict):
        return False, _error("invalid_prompt", "Invalid prompt", "not an object"), [], {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        if node["class_type"] not in nodes.NODE_CLASS_MAPPINGS:
            msg = f"Node '{node['class_type']}' not found. The custom node may not be installed."
            return (
                False,
                _error(
                    "missing_node_type",
                    msg,
                    f"Node ID '#{node_id}'",
                    node_id=node_id,
                    class_type=node["class_type"],
                ),
                [],
                {},
            )
    outputs = [
        node_id
        for node_id, node in prompt.items()
        if getattr(nodes.NODE_CLASS_MAPPINGS[node["class_type"]], "OUTPUT_NODE", False)
    ]
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}
    node_errors: dict[str, Any] = {}
    good_outputs = []
    for out in outputs:
        needed: set[str] = set()
        _ancestors(prompt, out, needed)
        failed = False
        for node_id in sorted(needed):
            errs = _node_errors(prompt, node_id)
            if errs:
                failed = True
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": errs,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
        if not failed:
            good_outputs.append(out)
    if node_errors or not good_outputs:
        return (
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
            good_outputs,
            node_errors,
        )
    return True, None, good_outputs, {}


# ------------------------------------------------------------------------------ execution


class _Unhashable:
    """Stands for a value that cannot be a cache key: equal to nothing, so it never hits."""


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return _Unhashable()
    return value


@dataclass
class _Cached:
    signature: Any
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass
class PromptExecutor:
    """Runs prompts one after the other; keeps node instances and cached outputs."""

    cache: dict[Any, _Cached] = field(default_factory=collections.OrderedDict)
    objects: dict[tuple[str, str], Any] = field(default_factory=dict)

    def reset(self) -> None:
        self.cache.clear()
        self.objects.clear()

    def _is_changed(self, cls: type, inputs: dict[str, Any]) -> Any:
        fn = getattr(cls, "IS_CHANGED", None)
        if fn is None:
            return False
        constants = {k: v for k, v in inputs.items() if not _is_link(v)}
        try:
            return fn(**constants)
        except Exception as e:  # noqa: BLE001 - upstream logs it and treats it as NaN
            logging.warning("WARNING: %s", e)
            return float("nan")

    def _signatures(self, prompt: Prompt, order: list[str]) -> dict[str, Any]:
        sigs: dict[str, Any] = {}
        for node_id in order:
            node = prompt[node_id]
            cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
            inputs = node.get("inputs", {})
            parts = []
            for name in sorted(inputs):
                value = inputs[name]
                if _is_link(value):
                    parts.append((name, ("link", sigs[str(value[0])], value[1])))
                else:
                    parts.append((name, _hashable(value)))
            changed = self._is_changed(cls, inputs)
            changed = (
                changed
                if not isinstance(changed, float) or not math.isnan(changed)
                else _Unhashable()
            )
            sigs[node_id] = (node["class_type"], _hashable(changed), tuple(parts))
        return sigs

    def _key(self, node_id: str, signature: Any) -> Any:
        return signature if args.cache_lru > 0 else node_id

    def _lookup(self, node_id: str, signature: Any) -> _Cached | None:
        if args.cache_none:
            return None
        hit = self.cache.get(self._key(node_id, signature))
        if hit is None or hit.signature != signature:
            return None
        if args.cache_lru > 0:
            self.cache.move_to_end(self._key(node_id, signature))  # type: ignore[attr-defined]
        return hit

    def _store(self, node_id: str, signature: Any, entry: _Cached) -> None:
        if args.cache_none:
            return
        self.cache[self._key(node_id, signature)] = entry
        if args.cache_lru > 0:
            while len(self.cache) > args.cache_lru:
                self.cache.popitem(last=False)  # type: ignore[call-arg]

    def execute(self, prompt: Prompt, prompt_id: str, outputs: list[str]) -> dict[str, Any]:
        """Run what the output nodes need; return the history entry."""
        messages: list[list[Any]] = [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}]
        ]
        needed: set[str] = set()
        for out in outputs:
            _ancestors(prompt, out, needed)
        order = _topological(prompt, needed)
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []
        values: dict[str, tuple[Any, ...]] = {}
        with torch.inference_mode():
            sigs = self._signatures(prompt, order)
            cached = [n for n in order if self._lookup(n, sigs[n]) is not None]
            messages.append(
                [
                    "execution_cached",
                    {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()},
                ]
            )
            for node_id in order:
                hit = self._lookup(node_id, sigs[node_id])
                if hit is not None:
                    values[node_id] = hit.outputs
                    if hit.ui is not None:
                        ui_outputs[node_id] = hit.ui
                    continue
                node = prompt[node_id]
                try:
                    result, ui = self._run_node(node_id, node, values)
                except Exception as e:  # noqa: BLE001 - any node error ends the prompt
                    messages.append(
                        ["execution_error", self._error(prompt_id, node_id, node, executed, e)]
                    )
                    if not args.cache_lru:
                        self._drop_unused(order)
                    return _history(prompt, prompt_id, ui_outputs, "error", False, messages)
                values[node_id] = result
                executed.append(node_id)
                if ui is not None:
                    ui_outputs[node_id] = ui
                self._store(node_id, sigs[node_id], _Cached(sigs[node_id], result, ui))
        if not args.cache_lru:
            self._drop_unused(order)
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()}])
        return _history(prompt, prompt_id, ui_outputs, "success", True, messages)

    def _drop_unused(self, order: list[str]) -> None:
        """Classic caching keeps only the nodes of the prompt just run."""
        keep = set(order)
        for key in [k for k in self.cache if k not in keep]:
            del self.cache[key]

    def _run_node(
        self, node_id: str, node: dict[str, Any], values: dict[str, tuple[Any, ...]]
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        class_type = node["class_type"]
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        instance = self.objects.get((node_id, class_type))
        if instance is None:
            instance = cls()
            self.objects[(node_id, class_type)] = instance
        kwargs = {}
        for name, value in node.get("inputs", {}).items():
            kwargs[name] = values[str(value[0])][value[1]] if _is_link(value) else value
        returned = getattr(instance, cls.FUNCTION)(**kwargs)
        if isinstance(returned, dict):
            return tuple(returned.get("result", ())), returned.get("ui")
        return tuple(returned or ()), None

    def _error(
        self,
        prompt_id: str,
        node_id: str,
        node: dict[str, Any],
        executed: list[str],
        e: Exception,
    ) -> dict[str, Any]:
        message = str(e)
        if isinstance(e, mm.OOM_EXCEPTION):
            logging.error("Got an OOM, unloading all loaded models.")
            self.reset()
            mm.unload_all_models()
            message += (
                "\nThis error means you ran out of memory on your GPU.\n\nTIPS: If the "
                "workflow worked before you might have accidentally set the batch_size to a "
                "large number."
            )
        kind = type(e)
        logging.error("!!! Exception during processing !!! %s", e)
        logging.error(traceback.format_exc())
        return {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": node["class_type"],
            "executed": list(executed),
            "exception_message": message,
            "exception_type": f"{kind.__module__}.{kind.__qualname__}",
            "traceback": traceback.format_tb(e.__traceback__),
            "current_inputs": {},
            "current_outputs": {},
            "timestamp": _now_ms(),
        }


def _topological(prompt: Prompt, needed: set[str]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise ValueError(f"the prompt has a cycle through node {node_id}")
        state[node_id] = 1
        for value in prompt[node_id].get("inputs", {}).values():
            if _is_link(value) and str(value[0]) in needed:
                visit(str(value[0]))
        state[node_id] = 2
        order.append(node_id)

    for node_id in sorted(needed):
        visit(node_id)
    return order


def _now_ms() -> int:
    return int(time.time() * 1000)


def _history(
    prompt: Prompt,
    prompt_id: str,
    outputs: dict[str, Any],
    status: str,
    completed: bool,
    messages: list[list[Any]],
) -> dict[str, Any]:
    return {
        "prompt": [0, prompt_id, prompt, {}, sorted(outputs)],
        "outputs": outputs,
        "status": {"status_str": status, "completed": completed, "messages": messages},
        "meta": {node_id: {"node_id": node_id} for node_id in outputs},
    }


# ------------------------------------------------------------------------------ the queue


@dataclass
class PromptQueue:
    """Prompts waiting and running, the history of finished ones, and the flags that
    `POST /free` leaves for the worker (it acts on them between prompts, as upstream)."""

    executor: PromptExecutor = field(default_factory=PromptExecutor)
    pending: collections.deque = field(default_factory=collections.deque)
    running: list[Any] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    number: int = 0
    free_memory: bool = False
    unload_models: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def put(self, prompt_id: str, prompt: Prompt, outputs: list[str]) -> int:
        with self.cond:
            number = self.number
            self.number += 1
            self.pending.append([number, prompt_id, prompt, {}, outputs])
            self.cond.notify_all()
            return number

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self.cond:
            self.unload_models |= unload_models
            self.free_memory |= free_memory
            self.cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            return {"queue_running": list(self.running), "queue_pending": list(self.pending)}

    def remaining(self) -> int:
        with self.cond:
            return len(self.pending) + len(self.running)

    def _free(self) -> None:
        if self.unload_models or self.free_memory:
            if self.free_memory:
                self.executor.reset()
            mm.unload_all_models()
            self.unload_models = self.free_memory = False

    def work(self) -> None:
        """The worker thread's loop."""
        while True:
            with self.cond:
                while not self.pending and not (self.unload_models or self.free_memory):
                    self.cond.wait()
                self._free()
                if not self.pending:
                    continue
                item = self.pending.popleft()
                self.running = [item]
            number, prompt_id, prompt, _, outputs = item
            started = time.perf_counter()
            try:
                entry = self.executor.execute(prompt, prompt_id, outputs)
            except Exception as e:  # noqa: BLE001 - the worker must survive any prompt
                logging.error(traceback.format_exc())
                entry = _history(
                    prompt,
                    prompt_id,
                    {},
                    "error",
                    False,
                    [
                        [
                            "execution_error",
                            {
                                "prompt_id": prompt_id,
                                "exception_message": str(e),
                                "node_id": None,
                                "node_type": None,
                                "executed": [],
                            },
                        ]
                    ],
                )
            entry["prompt"][0] = number
            with self.cond:
                self.history[prompt_id] = entry
                self.running = []
            logging.info("Prompt executed in %.2f seconds", time.perf_counter() - started)
