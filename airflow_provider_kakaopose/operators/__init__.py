"""Operators for the Kakao Brain Pose API."""
