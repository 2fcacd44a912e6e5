"""What the benchmark scripts share: processes, ports, topology files, a raw HTTP client, metrics, reports."""
