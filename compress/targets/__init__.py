"""Where models run: the device-side harness, CPU facts, execution providers, remote devices."""
