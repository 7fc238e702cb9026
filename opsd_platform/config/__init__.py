"""Public API of `opsd_platform.config`: re-exported from `schema.py` (the sections) and `keys.py` (hashes)."""

from opsd_platform.config.schema import (  # noqa: F401
    MODEL_SOURCES,
    WORLD_NAMES,
    TEACHER_KINDS,
    ACCELERATORS,
    STRATEGIES,
    ALGORITHMS,
    ConfigError,
    default_home,
    LoraConfig,
    TinyModelConfig,
    ModelConfig,
    WorldConfig,
    RolloutConfig,
    LossConfig,
    TeacherConfig,
    OptimConfig,
    TrainerConfig,
    GapConfig,
    TrackingConfig,
    TrainConfig,
)
from opsd_platform.config.keys import world_fields, config_hash, how_fields, HOW_LEVELS, flatten  # noqa: F401
