"""Dataset loaders and the small samples shipped with valharm (written for the project)."""
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "samples"
