"""Capture: frame sources by URI and the thread that feeds the pipeline's mailbox."""

from edged.capture.frame import Frame, Mailbox, MailboxClosed
from edged.capture.sources import (CorruptFrame, EndOfStream, RawFrame, Source, SourceError, SourceUriError,
                                   open_source, parse_uri)
from edged.capture.thread import CaptureThread

__all__ = ["CaptureThread", "CorruptFrame", "EndOfStream", "Frame", "Mailbox", "MailboxClosed", "RawFrame",
           "Source", "SourceError", "SourceUriError", "open_source", "parse_uri"]
