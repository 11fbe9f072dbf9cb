"""valharm: study the unintended harms of value-aligned LLMs."""

__version__ = "0.1.0"

from pathlib import Path as _Path

from omegaconf import OmegaConf as _OmegaConf

# ${valharm_samples_dir:} in configs: the folder of the small samples shipped inside the package.
_OmegaConf.register_new_resolver("valharm_samples_dir", lambda: str(_Path(__file__).parent / "data" / "samples"),
                                 replace=True)
