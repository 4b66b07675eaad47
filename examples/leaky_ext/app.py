"""Drives the leaky extension: 10 batches of 4 records of 256 bytes leak 40 blocks
(10,240 bytes) in parse_records; 3 labels leak 3 blocks of 32 bytes in copy_label; the index
of the labels leaks with everything it holds."""
import leaky


def load_batch(batch_size):
    return leaky.parse_records(batch_size, 256)  # @app_parse


def main():
    total = 0
    for _ in range(10):
        total += load_batch(4)
    labels = [leaky.make_label(name) for name in ("alpha", "beta", "gamma")]  # @app_label
    index = leaky.index_labels(labels)  # @app_index
    for size in (16, 1024, 4096):
        total += leaky.checksum(size)
    print("processed", total, ",".join(labels), len(index))


if __name__ == "__main__":
    main()
