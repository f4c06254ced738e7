"""The policy language: RuleSets, the SafetyContext, and the seccomp and Landlock filters."""
