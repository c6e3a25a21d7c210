"""Names of the Molecule test hosts' containers, as .config/molecule/create.yml makes them.

A container is named `<inventory name>-<checkout id>`, the checkout id being the
first 8 hex digits of the SHA-1 of the checkout's path (MOLECULE_PROJECT_DIRECTORY),
so two clones testing on one Docker engine never collide, and hosts a killed
run left behind never block the next run.
"""

from __future__ import annotations

import hashlib
import os


def checkout_id(project_dir: str | None = None) -> str:
    directory = project_dir or os.environ["MOLECULE_PROJECT_DIRECTORY"]
    return hashlib.sha1(directory.encode(), usedforsecurity=False).hexdigest()[:8]


def container(inventory_name: str) -> str:
    """The container of an inventory host."""
    return f"{inventory_name}-{checkout_id()}"


def spec(inventory_name: str) -> str:
    """A testinfra host spec (docker backend) for an inventory host."""
    return f"docker://{container(inventory_name)}"
