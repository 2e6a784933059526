"""Any record as a picture, for plugins that draw none of their own: tensors as heatmaps of their
last two axes, labelled with the dims and units the plugin described."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from probe.figures.base import draws, new_figure, pool_columns, require


def describe(trace, name: str) -> dict:
    """Record ``name``'s description: dims, units and a sentence, from its plugin and its meta."""
    from probe.contributions import current

    return current().describe(name, trace.records.get(name))


@draws
def record_heatmap(trace, name: str, index: tuple[int, ...] = ()) -> Figure:
    """Any tensor record (a plugin's own, say) as a heatmap of its last two axes, taken at
    ``index`` along the leading ones; axis names and units come from the plugin's description of the record
    (``probe_describe_records``) or its ``meta["axes"]``."""
    require(trace, name)
    entry = trace.records[name]
    shape = list(entry.get("shape") or [])
    if len(shape) - len(index) != 2:
        raise ValueError(f"record {name} has shape {shape}: give {len(shape) - 2} leading indices, not {len(index)}")
    view = trace.tensor(name, lazy=True)
    values = np.asarray(view[index] if index else view[:], dtype=np.float32)  # [row, column]
    shown, factor = pool_columns(values)
    described = describe(trace, name)
    axes = list(described.get("dims") or [f"axis {i}" for i in range(len(shape))])
    fig = new_figure(10, 4.5)
    ax = fig.add_subplot()
    image = ax.imshow(shown, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                      extent=(0, values.shape[1], 0, values.shape[0]))
    ax.set_xlabel(f"{axes[-1]} (index{f', pooled ×{factor}' if factor > 1 else ''})")
    ax.set_ylabel(f"{axes[-2]} (index)")
    at = ", ".join(f"{axis}={i}" for axis, i in zip(axes, index))
    ax.set_title(f"{name} {shape}{f' at {at}' if at else ''}")
    units = described.get("units")
    fig.colorbar(image, ax=ax, label=f"{units} ({entry.get('dtype')})" if units else f"value ({entry.get('dtype')})")
    return fig
