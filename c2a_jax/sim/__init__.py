"""ClevrSkills-compatible task suite on ManiSkill3 (SAPIEN 3), rendering on CPU through lavapipe."""
