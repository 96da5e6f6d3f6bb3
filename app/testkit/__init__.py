"""The testers' kit: virtual audio devices on demand (``helpdesk-voice rig``), scripted spoken
conversations with a pass/fail report (``helpdesk-voice drive``), and the measuring code the
benchmarks share. Nothing here takes part in a conversation: the app runs without it."""
