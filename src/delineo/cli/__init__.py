"""Command-line interface (placeholder, filled below)."""
def main():
    pass
