//! RedisStore
