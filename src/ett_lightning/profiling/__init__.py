"""Tools that show where a training step spends or loses time."""

from ett_lightning.profiling.host_syncs import HostSync, HostSyncRecorder

__all__ = ["HostSync", "HostSyncRecorder"]
