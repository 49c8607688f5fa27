"""Programs launched in fresh processes by the tests (2-process DDP, DeepSpeed, SIGKILL and resume, the
teacher-output cache); the tests also import their constants and builders from here."""
