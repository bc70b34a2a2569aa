"""edged: on-device runtime daemon for RK3399-class camera boards."""

__version__ = "0.1.0"
