"""Error types: every user-facing failure is an EdgekitError with a one-line message that names the fix."""
from __future__ import annotations


class EdgekitError(Exception):
    """Base class; the CLI prints str(err) in one red line and exits with code 2."""


class ConfigError(EdgekitError):
    """Bad option, recipe, target YAML or input spec."""


class UnsupportedModelError(EdgekitError):
    """A method or exporter cannot handle this model at all (raised before any work)."""


class MissingDependencyError(EdgekitError):
    """An optional runtime or library is missing; the message names the pip extra."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed; install it with: pip install 'edgekit[{extra}]'")
        self.package, self.extra = package, extra


class ExportMismatchError(EdgekitError):
    """An exported file disagrees with PyTorch beyond the tolerance; no artifact is written."""


class UnsafeModelError(EdgekitError):
    """A pickle needs classes the user did not allow."""


class ModelLoadError(EdgekitError):
    """A model file is missing, truncated, of the wrong format, or does not fit the architecture."""


class ArtifactError(ModelLoadError):
    """An artifact failed verification: a checksum, a path leaving the folder, a symlink, a malformed manifest or a
    non-finite validation figure."""
