"""adapt: prompt tuning and few-shot adaptation of GLIP, faithful to the official numbers."""

__version__ = "0.1.0"

# adapt's OmegaConf resolvers (the run-folder suffix) must exist wherever configs are composed:
# adapt.run, the sweeper plugin, hydra.compose in tests and notebooks. The deployed predictor
# (adapt.deploy) runs where only numpy, Pillow and onnxruntime are installed, so the package
# itself must import without omegaconf.
try:
    from adapt.resolvers import register_resolvers as _register_resolvers
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the deploy tests
    if _missing.name != "omegaconf":
        raise
else:
    _register_resolvers()
