"""The search space of ``pipelines/tune.py``: a documented default, file/flag overrides, validation.

A space maps dotted ``ModelConfig`` fields to a spec (JSON or YAML file, or ``--search KEY=SPEC``)::

    diffusion.beta_schedule: {grid: [linear, cosine, sigmoid, scaled_linear]}  # every value is tried
    diffusion.zero_terminal_snr: {choice: [false, true]}                       # one drawn per trial
    sampler.steps: [5, 10, 20]                                                 # a bare list = choice
    train.lr: {loguniform: [3.0e-4, 3.0e-3]}                                   # also: uniform
    diffusion.num_timesteps: 1000                                              # a scalar = fixed

On the command line the same specs read ``--search diffusion.beta_schedule=grid:linear,cosine``,
``--search train.lr=loguniform:1e-4,1e-2``, ``--search sampler.steps=5,10`` (choice),
``--search diffusion.num_timesteps=500`` (fixed) and ``--search sampler.name=`` (dropped: the
preset's value is used). Flags apply on top of the file, the file on top of the default.

Zero-terminal-SNR never trains with ε-prediction (ε is undefined at SNR 0): a trial that draws
``zero_terminal_snr=true`` with ``epsilon`` uses ``v`` instead (or the space's other non-ε type). A
space is rejected before any trial starts (``SpaceError``, one line) when a key is not a config
field, a spec is malformed, or any combination of its discrete values is an invalid config: an
unknown schedule or sampler, zero-SNR where ``epsilon`` is the only prediction type, T below the
sampler's steps, and every other ``ModelConfig.validate`` rule.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

from pipelines.cli.args import parse_value
from sas_model.config import ModelConfig

KINDS = ("grid", "choice", "loguniform", "uniform", "fixed")
MAX_CHECKED_COMBINATIONS = 20_000

# The default search: every noise schedule (a grid, so each is measured), zero-terminal-SNR, the
# prediction target, the validation sampler and its step count (UNet passes per sample), and the
# learning rate. T stays at 1000 (the trailing-spacing samplers make T nearly free at inference).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "diffusion.beta_schedule": {"grid": ["linear", "cosine", "sigmoid", "scaled_linear"]},
    "diffusion.zero_terminal_snr": {"choice": [False, True]},
    "diffusion.prediction_type": {"choice": ["x0", "v", "epsilon"]},
    "diffusion.num_timesteps": {"fixed": 1000},
    "sampler.name": {"choice": ["ddim", "dpmpp2m"]},
    "sampler.steps": {"choice": [5, 10, 20]},
    "train.lr": {"loguniform": [3e-4, 3e-3]},
}


class SpaceError(ValueError):
    """A search space that cannot run; the message is one line that says what to change."""


# ---- parsing ---------------------------------------------------------------------------------
def normalise_spec(key: str, spec: Any) -> dict[str, Any]:
    """``{kind: values}`` with one kind of ``KINDS``, from any accepted spelling."""
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise SpaceError(f"search space key {key}: expected one of {', '.join(KINDS)}, got {spec!r}")
        kind, values = next(iter(spec.items()))
    elif isinstance(spec, (list, tuple)):
        kind, values = "choice", list(spec)
    else:
        kind, values = "fixed", spec
    if kind in ("grid", "choice"):
        if not isinstance(values, (list, tuple)) or not values:
            raise SpaceError(f"search space key {key}: {kind} needs a non-empty list, got {values!r}")
        values = list(values)
    elif kind in ("loguniform", "uniform"):
        ok = isinstance(values, (list, tuple)) and len(values) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not ok or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise SpaceError(
                f"search space key {key}: {kind} needs [low, high] with low < high"
                f"{' and low > 0' if kind == 'loguniform' else ''}, got {values!r}"
            )
        values = [float(values[0]), float(values[1])]
    return {kind: values}


def parse_flag(text: str) -> tuple[str, dict[str, Any] | None]:
    """``--search KEY=SPEC`` -> ``(key, spec)``; an empty SPEC gives ``(key, None)`` (drop the key)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpaceError(f"--search expects KEY=SPEC (e.g. train.lr=loguniform:1e-4,1e-2), got {text!r}")
    raw = raw.strip()
    if not raw:
        return key, None
    kind, colon, rest = raw.partition(":")
    if colon and kind in KINDS:
        values = [parse_value(part) for part in rest.split(",") if part.strip()]
        if kind == "fixed":
            return key, normalise_spec(key, {"fixed": parse_value(rest)})
        return key, normalise_spec(key, {kind: values})
    value = parse_value(raw)
    return key, normalise_spec(key, value if isinstance(value, list) else {"fixed": value})


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML space file (a mapping of dotted keys to specs)."""
    file = Path(path)
    if not file.is_file():
        raise SpaceError(f"search space file {path} does not exist")
    text = file.read_text()
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError / yaml.YAMLError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpaceError(f"cannot parse search space file {path}: {first}") from None
    if not isinstance(data, dict):
        raise SpaceError(f"search space file {path} must hold a mapping of config keys to specs")
    return data


def build_space(file: str | None = None, flags: list[str] | None = None, default: bool = True) -> dict:
    """Default space, then the file's keys, then ``--search`` flags; every spec normalised."""
    space = copy.deepcopy(DEFAULT_SPACE) if default else {}
    if file:
        space.update({k: normalise_spec(k, v) for k, v in load_file(file).items()})
    for text in flags or []:
        key, spec = parse_flag(text)
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = spec
    return {key: normalise_spec(key, spec) for key, spec in space.items()}


# ---- trial configs ---------------------------------------------------------------------------
def allowed_prediction_types(space: dict[str, Any], base_config: dict[str, Any]) -> list[str]:
    """Prediction types a trial may use: the space's values, else the base preset's one."""
    spec = space.get("diffusion.prediction_type")
    if spec is None:
        return [base_config["diffusion"]["prediction_type"]]
    kind, values = next(iter(spec.items()))
    return list(values) if kind in ("grid", "choice") else [values]


def effective_params(params: dict[str, Any], allowed_types: list[str]) -> dict[str, Any]:
    """The trial's sampled params with the zero-SNR rule applied (ε -> v, else another non-ε type)."""
    out = dict(params)
    if bool(out.get("diffusion.zero_terminal_snr")) and out.get("diffusion.prediction_type") == "epsilon":
        non_eps = [t for t in allowed_types if t != "epsilon"]
        if non_eps:
            out["diffusion.prediction_type"] = "v" if "v" in non_eps else non_eps[0]
    return out


def trial_config(base_config: dict[str, Any], params: dict[str, Any], allowed_types: list[str]) -> Any:
    """``ModelConfig`` of one trial: the base preset with the (effective) sampled params."""
    return ModelConfig.from_dict(base_config).replace(**effective_params(params, allowed_types))


# ---- validation ------------------------------------------------------------------------------
def _discrete_values(spec: dict[str, Any]) -> list[Any]:
    kind, values = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return list(values)
    if kind == "fixed":
        return [values]
    return [values[0], values[1]]  # both ends of a continuous range


def grid_size(space: dict[str, Any]) -> int:
    """Number of grid combinations (1 without a grid): each sample repeats every combination."""
    return math.prod(len(spec["grid"]) for spec in space.values() if "grid" in spec)


def check_space(space: dict[str, Any], base_config: dict[str, Any]) -> int:
    """Reject a space that could start an invalid trial; return the number of combinations checked.

    Every key must be a config field; every combination of discrete values (continuous ranges at
    both ends) must pass ``ModelConfig.validate`` after the zero-SNR rule. Raises ``SpaceError``.
    """
    if not space:
        raise SpaceError("the search space is empty; give --space FILE or --search KEY=SPEC")
    base = ModelConfig.from_dict(base_config)
    for key, spec in space.items():
        try:
            base.replace(**{key: _discrete_values(spec)[0]})
        except ValueError as exc:
            raise SpaceError(f"search space key {key}: {exc}") from None
    allowed = allowed_prediction_types(space, base_config)
    snr_spec = space.get("diffusion.zero_terminal_snr")
    snr_values = _discrete_values(snr_spec) if snr_spec else [base.diffusion.zero_terminal_snr]
    if any(bool(v) for v in snr_values) and all(t == "epsilon" for t in allowed):
        raise SpaceError(
            "zero_terminal_snr=true needs v- or x0-prediction, but diffusion.prediction_type allows only "
            "'epsilon'; add v to it or remove true from diffusion.zero_terminal_snr"
        )
    keys = list(space)
    axes = [_discrete_values(space[k]) for k in keys]
    total = math.prod(len(a) for a in axes)
    combos = itertools.product(*axes)
    if total > MAX_CHECKED_COMBINATIONS:
        combos = itertools.islice(combos, MAX_CHECKED_COMBINATIONS)
    checked = 0
    for values in combos:
        params = dict(zip(keys, values, strict=True))
        try:
            trial_config(base_config, params, allowed).validate()
        except ValueError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k in _keys_in(str(exc), keys))
            where = f" ({shown})" if shown else ""
            raise SpaceError(f"invalid search space{where}: {exc}") from None
        checked += 1
    return checked


def _keys_in(message: str, keys: list[str]) -> list[str]:
    """The space keys a validation message is about (matched on the field's last name)."""
    hits = [k for k in keys if k in message or k.rsplit(".", 1)[-1] in message]
    return hits or []


# ---- Ray Tune ----------------------------------------------------------------------------------
def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune ``param_space`` (flat dotted keys) for a normalised space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        if kind == "grid":
            out[key] = tune.grid_search(values)
        elif kind == "choice":
            out[key] = tune.choice(values) if len(values) > 1 else values[0]
        elif kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        else:
            out[key] = values
    return out


def describe(space: dict[str, Any]) -> str:
    """One line per key, for the log: ``diffusion.beta_schedule: grid [linear, cosine]``."""
    lines = []
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        lines.append(f"  {key}: {kind} {json.dumps(values)}")
    return "\n".join(lines)
