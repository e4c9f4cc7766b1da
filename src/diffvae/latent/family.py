"""The latent-diffusion family's spec (:class:`diffvae.contract.FamilySpec`). Fitting runs two
engine runs (autoencoder, then diffusion on its latent): :mod:`diffvae.latent.fit`."""

from __future__ import annotations

from diffvae.diffusion.family import SAMPLERS, SWEEP, DiffusionSpec


class LatentDiffusionSpec(DiffusionSpec):
    def report_cells(self, prefix: str) -> dict[str, list]:
        return {"Posterior collapse": ["not applicable to the diffusion stage; autoencoder round trip PSNR ",
                                       ("", prefix + "ae_psnr_db"), " dB"]}

    def check_fit(self, model, train_config, dataset) -> None:
        from diffvae.latent.fit import check_fit

        check_fit(model, train_config, dataset)

    def fit(self, model, dataset, train_config, run, *, resume: bool, progress: bool):
        from diffvae.latent.fit import fit

        return fit(model, dataset, train_config, run, resume=resume, progress=progress)


SPEC = LatentDiffusionSpec(
    title="Latent diffusion",
    short="LDM",
    objective="autoencoder ELBO, then latent noise-prediction MSE",
    latent_space="learned encoder + fixed forward process on its latent",
    interpolation="latent DDIM inversion + slerp",
    bound_label="LSGM bound ",
    # the entropy part is +H[q(z|x)], which the bound subtracts (diffvae.latent.bound)
    bound_parts=(("reconstruction_bpd", "reconstruction", 1), ("entropy_bpd", "−entropy H[q(z|x)]", -1),
                 ("latent_prior_bpd", "latent diffusion bound", 1), ("jacobian_bpd", "scale Jacobian", 1)),
    bound_extras=((", latent prior's reverse variance ", "variance"), ("; fixed-small ", "bpd_small"), (", fixed-large ", "bpd_large")),
    iterative=True,
    invertible=True,
    has_encoder=True,
    samplers=SAMPLERS,
    stochastic_samplers=("ddpm",),
    sweep=SWEEP,
    color="#2ca02c",
)
