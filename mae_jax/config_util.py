"""Helpers for configs: `--config configs/x.py:variant=base,steps=10` argument parsing."""

from __future__ import annotations


def parse_arg(arg: str | None, **defaults) -> dict:
  """'variant=base,steps=10' -> {'variant': 'base', 'steps': 10} over `defaults`.

  Values are converted to the type of their default; an unknown key is an error
  naming the keys that exist (a typo must not be silently ignored).
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} must look like key=value")
    key, value = item.split("=", 1)
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    elif defaults[key] is None:
      out[key] = value
    else:
      out[key] = kind(value)
  return out
