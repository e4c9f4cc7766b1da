"""The registry: a family name → its spec, ``"package.module:NAME"`` (:class:`diffvae.contract.FamilySpec`, the
one description of a family). Adding a family is its package plus one line; a spec is imported when asked for."""

import importlib

from diffvae.errors import DiffvaeError

REGISTRY = {"vae": "diffvae.vae.family:SPEC", "ddpm": "diffvae.diffusion.family:SPEC",
            "ldm": "diffvae.latent.family:SPEC", "flow": "diffvae.flow.family:SPEC"}


class Family:
    """A registry entry: ``module`` is "package.module:NAME" (NAME defaults to SPEC). A spec without classes
    (a test's toy family) names its module's classes, summary and train defaults here instead."""

    def __init__(self, name, module, model_class="", config_class="", summary="", train_defaults=None):
        self.name, self.module, self._names = name, module, (config_class, model_class)
        self._summary, self._defaults = summary, train_defaults

    def spec(self):
        module, _, attribute = self.module.partition(":")
        return getattr(importlib.import_module(module), attribute or "SPEC")

    def load(self):
        """(ConfigClass, ModelClass)."""
        spec, module = self.spec(), importlib.import_module(self.module.partition(":")[0])
        return (spec.config_class, spec.model_class) if spec.config_class else tuple(getattr(module, n) for n in self._names)

    summary = property(lambda self: self._summary or self.spec().summary)
    train_defaults = property(lambda self: dict(self.spec().train_defaults if self._defaults is None else self._defaults))
    recipes = property(lambda self: self.spec().recipes)


FAMILIES: dict[str, Family] = {name: Family(name, path) for name, path in REGISTRY.items()}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise DiffvaeError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]
