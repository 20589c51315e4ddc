"""python -m engine.serve / ternary-serve: one process (engine/serve/server.py), or with
--replicas N a Ray Serve application (engine/serve/cluster.py; --help lists both)."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.split("=")[0] in ("--replicas", "--ray-address", "-h", "--help") for a in argv):
        from engine.serve.cluster import main as cluster_main   # imports ray only for --replicas
        return cluster_main(argv)
    from engine.serve.server import main as server_main
    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
