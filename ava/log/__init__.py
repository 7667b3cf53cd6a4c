"""Logging: ``from ava.log.logger import MultiProcessingLogHandler, initialize_logger, logger``."""
