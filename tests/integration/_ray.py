"""Shared by the Ray integration tests."""
from __future__ import annotations

import os


def ray_default_dir() -> str:
    """Create Ray's default temp dir (<system tmp>/ray) if missing: `ray.cluster_utils.Cluster` writes the head's
    address file there even when the head gets its own temp_dir, and fails on a machine where nothing made it yet."""
    try:
        from ray._common.utils import get_default_ray_temp_dir  # where this Ray version keeps it
        path = get_default_ray_temp_dir()
    except ImportError:
        import tempfile

        path = os.path.join(tempfile.gettempdir(), "ray")
    os.makedirs(path, exist_ok=True)
    return path
