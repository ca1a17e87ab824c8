// User id (uint64) -> slot (uint32): open addressing with linear probing.
// About 23 bytes per id at the maximum load of 0.7, a third of what a
// std::unordered_map node costs; this matters for the memory per vector.
#pragma once
#include <cstdint>
#include <vector>

namespace simsearch {

class IdMap {
public:
    static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
    static constexpr uint32_t kTomb = 0xFFFFFFFEu;

    size_t size() const { return size_; }
    size_t memory_bytes() const { return table_.capacity() * sizeof(Entry); }

    uint32_t find(uint64_t key) const {
        if (table_.empty()) return kEmpty;
        size_t i = hash(key) & mask_;
        while (true) {
            const Entry& e = table_[i];
            if (e.val == kEmpty) return kEmpty;
            if (e.val != kTomb && e.key == key) return e.val;
            i = (i + 1) & mask_;
        }
    }

    void insert(uint64_t key, uint32_t val) {  // key must be absent
        if ((size_ + tombs_ + 1) * 10 > table_.size() * 7) rehash(std::max<size_t>(16, (size_ + 1) * 2));
        size_t i = hash(key) & mask_;
        while (table_[i].val != kEmpty && table_[i].val != kTomb) i = (i + 1) & mask_;
        if (table_[i].val == kTomb) --tombs_;
        table_[i] = Entry{key, val};
        ++size_;
    }

    bool erase(uint64_t key) {
        if (table_.empty()) return false;
        size_t i = hash(key) & mask_;
        while (true) {
            Entry& e = table_[i];
            if (e.val == kEmpty) return false;
            if (e.val != kTomb && e.key == key) {
                e.val = kTomb;
                --size_;
                ++tombs_;
                return true;
            }
            i = (i + 1) & mask_;
        }
    }

    void clear() {
        table_.clear();
        table_.shrink_to_fit();
        size_ = tombs_ = 0;
        mask_ = 0;
    }

    void reserve(size_t n) {
        if (n * 10 > table_.size() * 7) rehash(n * 2);
    }

private:
    struct Entry {
        uint64_t key;
        uint32_t val;
    };

    static size_t hash(uint64_t x) {  // splitmix64 finalizer
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebULL;
        x ^= x >> 31;
        return size_t(x);
    }

    void rehash(size_t want) {
        size_t cap = 16;
        while (cap < want) cap <<= 1;
        std::vector<Entry> old;
        old.swap(table_);
        table_.assign(cap, Entry{0, kEmpty});
        mask_ = cap - 1;
        size_ = tombs_ = 0;
        for (const Entry& e : old)
            if (e.val != kEmpty && e.val != kTomb) insert(e.key, e.val);
    }

    std::vector<Entry> table_;
    size_t mask_ = 0, size_ = 0, tombs_ = 0;
};

}  // namespace simsearch
