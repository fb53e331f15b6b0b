"""Concrete plugins (models, tasks, characteristics, compressors), each reached from conf/ via _target_."""
