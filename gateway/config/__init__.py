"""Configuration: one TOML file plus ``SYMBI_*`` environment overrides, validated at start."""

from gateway.config.load import ENV_OVERRIDES, build_config, config_path_from_env, load_config
from gateway.config.model import Config, ServerConfig

__all__ = ["ENV_OVERRIDES", "Config", "ServerConfig", "build_config", "config_path_from_env", "load_config"]
