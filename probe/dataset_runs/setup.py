"""What a tracer is made of, as plain values: a Ray actor rebuilds the same tracer from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def absolute_plugin_refs(refs) -> tuple[str, ...]:
    """``-p`` values with ``.py`` paths made absolute, so a worker in another folder finds them."""
    return tuple(os.path.abspath(ref) if isinstance(ref, str) and ref.endswith(".py") else ref for ref in refs)


@dataclass
class TracerSetup:
    """Model spec, device and dtype as asked, plugin references (``-p`` values), decode options,
    hook points, plugin options and interventions: everything :meth:`make` needs."""

    model: str | None
    options: object  # probe.tracer.DecodeOptions
    device: str = "auto"
    dtype: str = "auto"
    plugins: tuple = ()
    points: tuple = ()
    plugin_options: dict = field(default_factory=dict)
    interventions: list = field(default_factory=list)

    def make(self, progress: bool = False):
        """Load the model and the plugins and return the :class:`~probe.tracer.Tracer`."""
        from probe import runner
        from probe.plugin_manager import get_plugin_manager
        from probe.tracer import Tracer

        loaded = runner.load(self.model, device=self.device, dtype=self.dtype)
        pm = get_plugin_manager(plugins=list(self.plugins))
        return Tracer(loaded, pm, self.options, points=list(self.points), plugin_options=dict(self.plugin_options),
                      progress=progress, interventions=list(self.interventions))

    def identity(self, spec, pm):
        """This setup's :class:`~probe.dataset_runs.RunIdentity` over ``spec``'s rows (``pm``: the
        plugin manager the run uses, for the plugins' versions)."""
        from probe import interventions as interventions_mod
        from probe.dataset_runs.identity import RunIdentity
        from probe.models import _resolve
        from probe.runner import plugin_versions

        model = _resolve(self.model).model_id if not hasattr(self.model, "model_id") else self.model.model_id
        return RunIdentity.of(spec, model=model, device=self.device, dtype=self.dtype, options=self.options.to_dict(),
                              plugins=plugin_versions(pm), points=list(self.points),
                              plugin_options=dict(self.plugin_options),
                              interventions=interventions_mod.summary(list(self.interventions)))
