//! The end-to-end test harness: real systemd instances booted from an image (see the testbed issue).
