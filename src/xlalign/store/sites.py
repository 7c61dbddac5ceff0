"""Capture sites: where in the model a hidden state is read, and the ``--sites`` spec language.

Sites, in depth order:

- ``embed``: the input to the first block, i.e. the embedding output, including additive
  position embeddings (GPT-2 ``wpe``) and, for BERT-style encoders, the embeddings LayerNorm;
  this is ``output_hidden_states[0]``.
- ``L0`` .. ``L{n-1}``: the raw output of block ``i`` (a forward hook on the block). For
  decoders with a final norm, ``L{n-1}`` is *not* ``output_hidden_states[-1]``.
- ``final``: the output of the model's final norm (``output_hidden_states[-1]`` for
  Qwen2, Llama, GPT-2...). Encoders such as BERT have no final norm and no ``final`` site.

A spec is a comma-separated list of ``embed``, ``L<i>``, ``L<i>-L<j>`` (inclusive), ``final``
and ``all``; the result is ordered by depth with duplicates removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from xlalign.errors import XlalignError

EMBED = "embed"
FINAL = "final"

_LAYER = re.compile(r"^L(\d+)$")
_RANGE = re.compile(r"^L(\d+)\s*-\s*L?(\d+)$")


def layer_site(i: int) -> str:
    """Name of block ``i``'s output site: ``L{i}``."""
    return f"L{i}"


def available_sites(n_layers: int, has_final: bool) -> list[str]:
    """Every site a model with ``n_layers`` blocks offers, in depth order."""
    return [EMBED, *(layer_site(i) for i in range(n_layers)), *([FINAL] if has_final else [])]


def site_depth(site: str) -> int:
    """Sort key: ``embed`` -> -1, ``L{i}`` -> i, ``final`` -> a number past every block."""
    if site == EMBED:
        return -1
    if site == FINAL:
        return 1 << 30
    m = _LAYER.match(site)
    if m is None:
        raise XlalignError(f"'{site}' is not a site name (embed, L<i> or final)")
    return int(m.group(1))


def sort_sites(sites: Iterable[str]) -> list[str]:
    """``sites`` ordered by depth, duplicates removed."""
    return sorted(set(sites), key=site_depth)


def describe_sites(sites: Sequence[str]) -> str:
    """A short listing with runs of blocks collapsed: ``"embed, L0..L35, final"``."""
    parts: list[str] = []
    run: list[int] = []

    def close_run() -> None:
        if run:
            parts.append(f"L{run[0]}" if len(run) == 1 else f"L{run[0]}..L{run[-1]}")
            run.clear()

    for site in sites:
        m = _LAYER.match(site)
        if m is not None and (not run or int(m.group(1)) == run[-1] + 1):
            run.append(int(m.group(1)))
            continue
        close_run()
        if m is not None:
            run.append(int(m.group(1)))
        else:
            parts.append(site)
    close_run()
    return ", ".join(parts) if parts else "no sites"


def parse_sites(
    spec: str | Sequence[str], n_layers: int, has_final: bool, *, where: str = "model"
) -> list[str]:
    """The sites named by ``spec`` (``"embed,L0,L5-L10,all"``), ordered by depth.

    Raises :class:`XlalignError` naming the site asked for and what exists, e.g.
    ``site 'L40' not in model: it has embed, L0..L35, final``.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s for s in items if s]
    if not items:
        raise XlalignError("no sites given: use e.g. --sites all or --sites embed,L0,L5-L10")
    available = available_sites(n_layers, has_final)
    have = describe_sites(available)

    def missing(name: str) -> XlalignError:
        why = f" ({where} has no final norm)" if name == FINAL and not has_final else ""
        return XlalignError(f"site '{name}' not in {where}: it has {have}{why}")

    chosen: list[str] = []
    for item in items:
        if item == "all":
            chosen.extend(available)
        elif item in (EMBED, FINAL):
            if item not in available:
                raise missing(item)
            chosen.append(item)
        elif (m := _LAYER.match(item)) is not None:
            if int(m.group(1)) >= n_layers:
                raise missing(item)
            chosen.append(item)
        elif (m := _RANGE.match(item)) is not None:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise XlalignError(f"site range '{item}' runs backwards; write L{hi}-L{lo}")
            if hi >= n_layers:
                raise missing(f"L{hi}")
            chosen.extend(layer_site(i) for i in range(lo, hi + 1))
        else:
            raise XlalignError(
                f"site '{item}' not understood: use embed, L<i>, L<i>-L<j>, final or all "
                f"({where} has {have})"
            )
    return sort_sites(chosen)
