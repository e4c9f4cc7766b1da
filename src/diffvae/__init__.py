"""diffvae: VAEs, pixel diffusion, latent diffusion and flow matching, trained and measured on your data.

The public API (imported lazily so that ``import diffvae`` stays quick):

* ``load(run)``                     — a trained run's model (``sample``, ``bound``, ``to_latent``/``from_latent``, ``nfe``:
                                      :class:`diffvae.contract.FamilyModel`)
* ``train_run(family, data, ...)``  — train a family into a run directory
* ``load_data(spec)``               — a data source as uint8 tensors with a fixed held-out split
* ``NoiseSchedule``, ``sample``, ``ddim_invert``, ``slerp``, ``diffusion_bpd``, ``analytic_variance`` — diffusion math
* ``evaluate(model)``               — the one evaluation every family gets
"""

__version__ = "0.1.0"

_LAZY = {
    "load": "diffvae.api",
    "train_run": "diffvae.api",
    "DataConfig": "diffvae.api",
    "TrainConfig": "diffvae.configs",
    "load_data": "diffvae.data",
    "NoiseSchedule": "diffvae.diffusion.schedule",
    "sample": "diffvae.diffusion.samplers",
    "ddim_invert": "diffvae.diffusion.samplers",
    "slerp": "diffvae.diffusion.samplers",
    "diffusion_bpd": "diffvae.diffusion.likelihood",
    "diffusion_bpd_estimate": "diffvae.diffusion.likelihood",
    "analytic_variance": "diffvae.diffusion.variance",
    "evaluate": "diffvae.evaluate",
    "DiffvaeError": "diffvae.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffvae' has no attribute {name!r}")
