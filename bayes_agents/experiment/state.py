"""Object state as plain data: trees of dicts, lists, strings, numbers and tensors.

Checkpoints hold the state of the training envs, of the model's run-time attributes and of the
random generators. Pickling them would make every checkpoint able to run code when loaded. Instead
:func:`encode` turns a state into a tree that ``torch.load(weights_only=True)`` reads back without
executing anything: numpy arrays become byte tensors with their dtype and shape, numpy generators
their ``bit_generator.state``, tuples, deques and mappings tagged lists. Objects are encoded as
their attribute values, and :func:`restore` writes those values back *into* a freshly built object
of the same class (the env or model rebuilt from the run's config); configuration held by an
object (spaces, classes, functions) is rebuilt with it and not stored.

Objects of other libraries that hold native state (simulators, processes) cannot be encoded:
:class:`Unencodable` is raised and the caller decides (an env that cannot be checkpointed resumes
on freshly reset envs, with a warning).
"""

from __future__ import annotations

import collections
import types
from typing import Any

import numpy as np
import torch

#: Modules whose objects are encoded attribute by attribute (their state is plain data).
ENCODABLE_MODULES = (
    "bayes_envs",
    "bayes_agents",
    "stable_baselines3.common.vec_env",
    "stable_baselines3.common.running_mean_std",
    "gymnasium.core",
    "gymnasium.wrappers",
)
#: Modules whose objects :func:`restore` may create (without calling ``__init__``) when the template has none.
CONSTRUCTIBLE_MODULES = ("bayes_envs", "bayes_agents")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class Unencodable(TypeError):
    """A value that has no plain-data encoding (e.g. a simulator handle or a process)."""


def is_configuration(value: Any) -> bool:
    """Values an object's constructor rebuilds from the config: not state, never stored."""
    import gymnasium as gym

    return (
        isinstance(
            value, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)
        )
        or isinstance(value, gym.Space)
        or isinstance(value, torch.device)
    )


def _qualified(value: Any) -> str:
    return f"{type(value).__module__}:{type(value).__qualname__}"


def encode(value: Any, *, skip: frozenset[str] = frozenset()) -> Any:
    """A plain-data tree of ``value`` (see the module docstring); ``skip``: attribute names left out
    (of ``value`` and of the objects it holds as attributes).

    :raises Unencodable: a value inside has no plain-data form.
    """
    # numpy's float64 is a Python float too: it is tagged below, or torch would have to unpickle it.
    if value is None or (isinstance(value, (bool, int, float, str)) and not isinstance(value, np.generic)):
        return value
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().clone()}
    if isinstance(value, torch.Generator):
        return {"__torch_generator__": value.get_state(), "device": str(value.device)}
    if isinstance(value, np.generic):
        if value.dtype.kind == "O":
            raise Unencodable("numpy object scalar")
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OV":
            raise Unencodable(f"numpy array of dtype {value.dtype}")
        raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1).copy()
        return {"__ndarray__": torch.from_numpy(raw), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.dtype):
        if value.kind in "OV":
            raise Unencodable(f"numpy dtype {value}")
        return {"__dtype__": value.str}
    if isinstance(value, np.random.Generator):
        name = type(value.bit_generator).__name__
        if name not in _BIT_GENERATORS:
            raise Unencodable(f"bit generator {name}")
        return {"__generator__": name, "state": encode(value.bit_generator.state)}
    if isinstance(value, np.random.RandomState):
        return {"__randomstate__": encode(value.get_state(legacy=False))}
    if isinstance(value, collections.deque):
        return {"__deque__": [encode(item) for item in value], "maxlen": value.maxlen}
    if isinstance(value, tuple):
        items = [encode(item) for item in value]
        if hasattr(type(value), "_fields"):
            return {"__namedtuple__": _qualified(value), "items": items}
        return {"__tuple__": items}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {"__map__": [[encode(key), encode(item)] for key, item in value.items()]}
    module = type(value).__module__
    if module.startswith(ENCODABLE_MODULES) and hasattr(value, "__dict__"):
        attributes = {}
        for name, item in vars(value).items():
            if name in skip or is_configuration(item):
                continue
            # ``skip`` holds at every depth (a wrapper's inner env has the same derived attributes).
            attributes[name] = encode(item, skip=skip)
        return {"__object__": _qualified(value), "attributes": attributes}
    raise Unencodable(f"{type(value).__module__}.{type(value).__qualname__} has no plain-data encoding")


def _is_frozen(value: Any) -> bool:
    parameters = getattr(type(value), "__dataclass_params__", None)
    return bool(parameters is not None and parameters.frozen)


def _construct(name: str) -> Any:
    """An empty instance (``__init__`` not called) of a class of :data:`CONSTRUCTIBLE_MODULES`."""
    import importlib

    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(CONSTRUCTIBLE_MODULES):
        raise ValueError(f"the state holds a {name} where the freshly built object has none")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, type):
        raise ValueError(f"{name} is not a class")
    return target.__new__(target)


def restore(data: Any, template: Any = None) -> Any:
    """The value encoded in ``data``; objects are restored into ``template`` (same class), in place.

    :param template: the freshly built counterpart of the value (its attributes give the classes of
        named tuples, the devices of tensors and the objects to restore into).
    :raises ValueError: the state does not fit the template (another class or structure).
    """
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        templates = (
            template if isinstance(template, list) and len(template) == len(data) else [None] * len(data)
        )
        return [restore(item, sub) for item, sub in zip(data, templates, strict=True)]
    if not isinstance(data, dict):
        raise ValueError(f"unexpected {type(data).__name__} in a state")
    if "__tensor__" in data:
        tensor = data["__tensor__"]
        return tensor.to(template.device) if isinstance(template, torch.Tensor) else tensor
    if "__torch_generator__" in data:
        generator = template if isinstance(template, torch.Generator) else torch.Generator(data["device"])
        generator.set_state(data["__torch_generator__"])
        return generator
    if "__npscalar__" in data:
        scalar_type = np.dtype(data["__npscalar__"])
        if scalar_type.kind in "OV":
            raise ValueError(f"numpy dtype {scalar_type} in a state")
        return scalar_type.type(data["value"])
    if "__ndarray__" in data:
        dtype = np.dtype(data["dtype"])
        if dtype.kind in "OV":
            raise ValueError(f"numpy dtype {dtype} in a state")
        raw = data["__ndarray__"].numpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(data["shape"]).copy()
    if "__dtype__" in data:
        dtype = np.dtype(data["__dtype__"])
        if dtype.kind in "OV":
            raise ValueError(f"numpy dtype {dtype} in a state")
        return dtype
    if "__generator__" in data:
        if data["__generator__"] not in _BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {data['__generator__']!r}")
        bit_generator = getattr(np.random, data["__generator__"])()
        bit_generator.state = restore(data["state"])
        return np.random.Generator(bit_generator)
    if "__randomstate__" in data:
        random_state = np.random.RandomState()
        random_state.set_state(restore(data["__randomstate__"]))
        return random_state
    if "__deque__" in data:
        items = data["__deque__"]
        templates = list(template) if isinstance(template, collections.deque) else []
        templates = templates if len(templates) == len(items) else [None] * len(items)
        return collections.deque(
            (restore(item, sub) for item, sub in zip(items, templates, strict=True)), maxlen=data["maxlen"]
        )
    if "__tuple__" in data or "__namedtuple__" in data:
        items = data.get("__tuple__", data.get("items"))
        templates = list(template) if isinstance(template, tuple) and len(template) == len(items) else None
        values = [
            restore(item, sub) for item, sub in zip(items, templates or [None] * len(items), strict=True)
        ]
        if "__namedtuple__" in data:
            if template is None or _qualified(template) != data["__namedtuple__"]:
                raise ValueError(
                    f"the state holds a {data['__namedtuple__']} where the fresh object has {template!r}"
                )
            return type(template)(*values)
        return tuple(values)
    if "__map__" in data:
        result = {}
        for key_data, item in data["__map__"]:
            key = restore(key_data)
            sub = template.get(key) if isinstance(template, dict) else None
            result[key] = restore(item, sub)
        if isinstance(template, collections.defaultdict):
            return collections.defaultdict(template.default_factory, result)
        return result
    if "__object__" in data:
        name = data["__object__"]
        target = template
        if target is None or _qualified(target) != name or _is_frozen(target):
            # Frozen (value) objects may be shared: never changed in place, a new one is made.
            target = _construct(name)
        attributes = vars(target)
        for attribute, item in data["attributes"].items():
            # Straight into __dict__ (as unpickling does): no property setters or frozen checks.
            attributes[attribute] = restore(item, attributes.get(attribute))
        return target
    raise ValueError(f"unknown entry {sorted(data)} in a state")
