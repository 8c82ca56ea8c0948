"""A deploy hook: ``deploy: {type: "my_flywheel.deploy:ChampionFile", path: ...}``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from pydantic import Field

from flywheel.deliver.deploy import DeployHook, PromotionContext

if TYPE_CHECKING:
    from flywheel.deliver.registry import VersionInfo


class ChampionFile(DeployHook):
    """Writes the new champion as JSON to a file that serving watches (on a volume both can read)."""

    path: str = Field(..., min_length=1, description="The file serving reads the champion from.")

    def deploy(self, champion: VersionInfo, promotion: PromotionContext) -> dict[str, Any]:
        record = {
            "workload_id": champion.workload_id,
            "version": champion.version,
            "base_model": champion.base_model,
            "adapter_uri": champion.adapter_uri,
            "previous_version": promotion.previous.version if promotion.previous else None,
        }
        # Write then rename: serving never reads half a file.
        with open(f"{self.path}.tmp", "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(f"{self.path}.tmp", self.path)
        return {"status": "deployed", "path": self.path}
