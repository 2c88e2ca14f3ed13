from segcache.bench.floor import new_parts


def test_new_tokens_are_cut_at_part_ends_after_the_reused_prefix():
    prompt = tuple(range(10))
    part_ends = (2, 5, 8, 10)
    assert new_parts(prompt, part_ends, reused=5) == [[5, 6, 7], [8, 9]]
    assert new_parts(prompt, part_ends, reused=4) == [[4], [5, 6, 7], [8, 9]]  # a reuse that ends inside a part
    assert new_parts(prompt, part_ends, reused=0) == [[0, 1], [2, 3, 4], [5, 6, 7], [8, 9]]
