"""adapt: prompt tuning and few-shot adaptation of GLIP, faithful to the official numbers."""

__version__ = "0.1.0"

# The run-folder resolver must exist wherever configs are composed (adapt.run, the sweeper
# plugin, hydra.compose in tests); everything that composes them imports this package first.
# The deployed runtime (adapt.deploy.runtime) runs without omegaconf, so its absence is not an error.
try:
    from adapt.rundir import register_resolver as _register_resolver
except ModuleNotFoundError as _missing:
    if _missing.name != "omegaconf":
        raise
else:
    _register_resolver()
