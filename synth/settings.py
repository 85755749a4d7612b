"""Process settings from environment variables (pydantic-settings).

Nothing reads the environment at import time: call ``get_settings()``; tests call
``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTCPT_", extra="ignore")

    data_dir: Path = Field(Path("."), description="root of everything agentcpt writes; client paths never leave it")
    model_dir: Path | None = Field(None, description="cache of converted models; default <data_dir>/models")
    api_token: SecretStr | None = Field(None, description="bearer token for the control plane")
    database_url: str | None = Field(None, description="job store URL; default sqlite under <data_dir>")
    ray_address: str | None = Field(
        None, description="Ray cluster for runs submitted by the API (Jobs API URL, e.g. http://ray-head:8265); null = local"
    )

    ray_include_dashboard: bool = Field(
        False,
        description="start the Ray dashboard (and its metrics agent) with a local Ray instance; off by "
        "default: it costs a few hundred MB and a core on a laptop",
    )

    @property
    def models_path(self) -> Path:
        return (self.model_dir or self.data_dir / "models").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
