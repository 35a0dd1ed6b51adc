"""What this project made itself: the embedded default model and the line list."""
