import time
def test_a(nin):
    for _ in range(2):
        t = time.perf_counter()
        r = nin("bench", "dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]", "trainer.batch_size=8",
        "trainer.eval_batch_size=16", "trainer.num_threads=1", "--steps", "2", "--rounds", "1", "--workers", "0", "--peak-size", "256", "--json")
        print("took", time.perf_counter() - t, r.code)
