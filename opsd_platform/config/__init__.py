"""Public API of `opsd_platform.config`: re-exported from `schema.py` (the sections) and `keys.py` (hashes)."""

from opsd_platform.config.keys import HOW_LEVELS, config_hash, flatten, how_fields, world_fields  # noqa: F401
from opsd_platform.config.schema import (  # noqa: F401
    ACCELERATORS,
    ALGORITHMS,
    MODEL_SOURCES,
    STRATEGIES,
    TEACHER_KINDS,
    WORLD_NAMES,
    ConfigError,
    GapConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    TeacherConfig,
    TinyModelConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
    WorldConfig,
    default_home,
)
