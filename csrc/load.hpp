// Reading an index file (io.hpp has the layout). A file is treated as
// hostile: its checksums carry no key, so they only catch accidents. In order:
//   1. header: magic, version, layout, checksum, metric, parameters;
//   2. every section inside the file, aligned, no two overlapping, each of exactly
//      the length the header's counts imply; all before anything is
//      allocated, so a small file cannot ask for a large allocation;
//   3. sections read (or mapped) and, with verify, their checksums checked;
//   4. structural checks (always, verify or not): levels, flags, upper-link
//      blocks, every link count, target and target level, entry point and
//      max level, free list, labels, quantizer parameters, stored norms,
//      attribute names; with verify also the float originals' finiteness.
// What passes cannot steer a search, add, remove or save out of bounds.
#pragma once
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "io.hpp"

namespace simsearch {

namespace detail {

inline bool mul_fits(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

// Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF).
inline bool valid_utf8(const std::string& s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const unsigned c = p[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
        else return false;
        if (i + len > n) return false;
        for (size_t j = 1; j < len; ++j) {
            if ((p[i + j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

}  // namespace detail

struct FileChecks {
    const std::string& path;
    const FileHeader& h;
    const uint64_t n;

    [[noreturn]] void corrupt(const std::string& what) const {
        throw FormatError("'" + path + "' is corrupt: " + what);
    }

    // 4. The arrays now in `ix` against each other and the header.
    void structure(const HnswIndex& ix, bool verify) const {
        const size_t M = ix.p_.M;
        uint64_t pool_need = 0;
        std::vector<std::pair<uint64_t, uint64_t>> blocks;  // upper-link block [begin, end) per node
        for (uint64_t s = 0; s < n; ++s) {
            const unsigned lv = ix.levels_[s];
            if (lv > unsigned(kMaxLevel)) corrupt("level out of range at slot " + std::to_string(s));
            if (ix.flags_[s] & ~kDeleted) corrupt("unknown flag bits at slot " + std::to_string(s));
            if (!std::isfinite(ix.norm2(uint32_t(s)))) corrupt("stored norm is not finite at slot " + std::to_string(s));
            if (lv == 0) continue;
            const uint64_t begin = ix.upper_off_[s], len = uint64_t(lv) * (M + 1);
            if (begin == kNone || begin + len > ix.upper_pool_.size())
                corrupt("upper links out of range at slot " + std::to_string(s));
            blocks.emplace_back(begin, begin + len);
            pool_need += len;
        }
        // Blocks that overlap would let one node's link writes change another
        // node's link count; the pool holds exactly the blocks.
        std::sort(blocks.begin(), blocks.end());
        for (size_t i = 1; i < blocks.size(); ++i)
            if (blocks[i].first < blocks[i - 1].second) corrupt("upper link blocks overlap");
        if (pool_need != ix.upper_pool_.size()) corrupt("upper link pool size does not match the levels");
        // Every link names a slot, at most max_links per list, and a target
        // that has the level the link is at (search reads its list there).
        for (uint64_t s = 0; s < n; ++s)
            for (int l = ix.levels_[s]; l >= 0; --l) {
                const uint32_t* ll = ix.links(uint32_t(s), l);
                if (ll[0] > ix.max_links(l)) corrupt("link count out of range at slot " + std::to_string(s));
                for (uint32_t j = 1; j <= ll[0]; ++j) {
                    if (ll[j] >= n) corrupt("link out of range at slot " + std::to_string(s));
                    if (ix.levels_[ll[j]] < l) corrupt("link to a node below the link's level at slot " + std::to_string(s));
                }
            }
        if (h.entry == kNone) {
            if (h.max_level != -1) corrupt("max level set without an entry point");
        } else {
            if (h.entry >= n) corrupt("entry point out of range");
            if (h.max_level != int(ix.levels_[h.entry])) corrupt("max level does not match the entry point's level");
        }
        // The free list: exactly the deleted slots, each once.
        if (ix.free_.size() != n - h.n_live) corrupt("free list length does not match the deleted count");
        std::vector<uint8_t> on_list(n, 0);
        for (uint32_t s : ix.free_) {
            if (s >= n) corrupt("free list out of range");
            if (!(ix.flags_[s] & kDeleted)) corrupt("free list names live slot " + std::to_string(s));
            if (on_list[s]) corrupt("free list names slot " + std::to_string(s) + " twice");
            on_list[s] = 1;
        }
        for (size_t d = 0; d < ix.p_.dim; ++d)
            if (!std::isfinite(ix.quant_.lo()[d]) || !std::isfinite(ix.quant_.step()[d]) || !(ix.quant_.step()[d] > 0.f))
                corrupt("quantizer parameters are not finite and positive at dimension " + std::to_string(d));
        for (size_t a = 0; a < ix.attrs_.names.size(); ++a) {
            const std::string& name = ix.attrs_.names[a];
            if (name.empty()) corrupt("empty attribute name");
            if (!detail::valid_utf8(name)) corrupt("attribute name " + std::to_string(a) + " is not valid UTF-8");
            if (ix.attrs_.index_of(name) != int(a)) corrupt("attribute '" + name + "' appears twice");
        }
        if (verify && ix.floats_kept()) {
            const float* f = ix.floats_.row(0);
            for (size_t i = 0, m = size_t(n) * ix.p_.dim; i < m; ++i)
                if (!std::isfinite(f[i])) corrupt("float originals contain NaN or infinity");
        }
    }
};

inline std::unique_ptr<HnswIndex> IndexFile::load(const std::string& path, bool use_mmap, bool verify,
                                                  const std::string& isa) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IOError("cannot open '" + path + "': " + std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st;
    if (::fstat(fd, &st) != 0) throw IOError("cannot stat '" + path + "': " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) throw IOError("'" + path + "' is a directory, not an index file");
    const uint64_t file_size = uint64_t(st.st_size);

    // 1. Header.
    FileHeader h;
    if (file_size < 8 || ::pread(fd, &h, std::min<uint64_t>(sizeof h, file_size), 0) < 8 ||
        std::memcmp(h.magic, kMagic, 8) != 0)
        throw FormatError("'" + path + "' is not a simsearch index file (bad magic)");
    if (file_size < sizeof h) throw FormatError("'" + path + "' is truncated: header incomplete");
    if (h.version > kFormatVersion)
        throw VersionError("'" + path + "' has format version " + std::to_string(h.version) +
                           ", newer than this simsearch reads (" + std::to_string(kFormatVersion) + "): upgrade simsearch");
    if (h.header_size != sizeof h || h.n_sections != kNumSections)
        throw FormatError("'" + path + "' has an unexpected header layout");
    if (checksum64(&h, offsetof(FileHeader, header_checksum)) != h.header_checksum)
        throw FormatError("'" + path + "' is corrupt: header checksum mismatch");
    if (h.metric > 2 || h.dtype != 0) throw FormatError("'" + path + "' has an unknown metric or dtype");
    const uint64_t n = h.n_slots;
    const FileChecks checks{path, h, n};
    if (h.dim == 0) checks.corrupt("dimension 0");
    if (h.M < 2 || h.M > 1024) checks.corrupt("M " + std::to_string(h.M) + " out of range (2..1024)");
    if (h.ef_construction < 1) checks.corrupt("ef_construction 0");
    if (h.train_limit < 1) checks.corrupt("train limit 0");
    if (h.ef > uint64_t(INT32_MAX)) checks.corrupt("ef " + std::to_string(h.ef) + " out of range");
    if (h.n_live > n || n >= kNone) checks.corrupt("counts out of range");
    if (h.max_level < -1 || h.max_level > kMaxLevel) checks.corrupt("max level out of range");
    if (h.flags & ~7u) checks.corrupt("unknown flag bits");
    const bool keep_floats = h.flags & 1u, quant_final = h.flags & 2u, has_floats = h.flags & 4u;

    // 2. Sections: inside the file, apart, and of the lengths the counts
    // imply. The quantizer sections hold dim floats each, so a dim the file
    // cannot hold fails here, before the index allocates anything for it.
    struct Span {
        uint64_t begin, end;
        uint32_t s;
    };
    std::vector<Span> spans;
    for (uint32_t i = 0; i < kNumSections; ++i) {
        const SectionEntry& e = h.sections[i];
        if (e.offset > file_size || e.length > file_size - e.offset)
            throw FormatError("'" + path + "' is truncated: section '" + kSectionNames[i] + "' ends past the end of the file");
        if (!e.length) continue;
        // Mapped sections are used in place as arrays of uint32/uint64/float:
        // save aligns each to 64 bytes, and a misaligned one is refused.
        if (e.offset % 64) checks.corrupt(std::string("section '") + kSectionNames[i] + "' is not 64-byte aligned");
        spans.push_back({e.offset, e.offset + e.length, i});
    }
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
    for (size_t i = 0; i < spans.size(); ++i) {
        if (spans[i].begin < sizeof h) checks.corrupt(std::string("section '") + kSectionNames[spans[i].s] + "' overlaps the header");
        if (i && spans[i].begin < spans[i - 1].end)
            checks.corrupt(std::string("sections '") + kSectionNames[spans[i - 1].s] + "' and '" + kSectionNames[spans[i].s] +
                           "' overlap");
    }
    // save writes the sections back to back, so the file ends where the
    // last one does: bytes past it were added by something else.
    if (verify && file_size != (spans.empty() ? uint64_t(sizeof h) : spans.back().end))
        checks.corrupt(std::to_string(file_size - (spans.empty() ? uint64_t(sizeof h) : spans.back().end)) +
                       " bytes past the last section");
    auto expect = [&](uint32_t s, uint64_t a, uint64_t b) {
        uint64_t len;
        if (!detail::mul_fits(a, b, len) || h.sections[s].length != len)
            checks.corrupt(std::string("section '") + kSectionNames[s] + "' has the wrong size");
    };
    expect(kQuantLo, h.dim, 4);
    expect(kQuantStep, h.dim, 4);
    const uint64_t dim_padded = padded_dim(h.dim);
    const uint64_t rec_size = 4 * (1 + 2 * h.M) + dim_padded + 4;  // the layout init_layout() builds
    if (h.rec_size != rec_size || h.dim_padded != dim_padded)
        throw FormatError("'" + path + "' has a record layout this build does not read");
    expect(kData0, n, rec_size);
    expect(kLabels, n, 8);
    expect(kLevels, n, 1);
    expect(kFlags, n, 1);
    expect(kUpperOff, n, 4);
    expect(kFree, n - h.n_live, 4);
    uint64_t nd;
    if (!detail::mul_fits(n, h.dim, nd)) checks.corrupt("counts out of range");
    expect(kFloats, has_floats ? nd : 0, 4);
    if (h.sections[kUpperPool].length % 4) checks.corrupt("section 'upper links' is not a whole number of links");
    if (n > 0 && !has_floats && (keep_floats || !quant_final))
        checks.corrupt(keep_floats ? "a rescoring index without its float originals"
                                   : "quantizer not final but the float originals are missing");

    IndexParams p;
    p.dim = h.dim;
    p.metric = Metric(h.metric);
    p.M = h.M;
    p.ef_construction = h.ef_construction;
    p.keep_floats = keep_floats;
    p.seed = h.seed;
    p.train_limit = h.train_limit;
    auto ix = std::make_unique<HnswIndex>(p, isa);

    // 3. Bring the sections in: mapped, or read into owned memory.
    std::shared_ptr<MappedFile> map;
    if (use_mmap) {
        void* base = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED) throw IOError("cannot mmap '" + path + "': " + std::strerror(errno));
        map = std::make_shared<MappedFile>(base, file_size, fd);
    }
    auto section_ptr = [&](uint32_t s, Buffer& owned) -> const char* {
        const SectionEntry& e = h.sections[s];
        if (map) return static_cast<const char*>(map->base) + e.offset;
        owned.resize(e.length);
        size_t got = 0;
        while (got < e.length) {
            const ssize_t r = ::pread(fd, owned.data() + got, e.length - got, off_t(e.offset + got));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) throw IOError("cannot read '" + path + "': " + std::strerror(errno));
            if (r == 0) throw FormatError("'" + path + "' is truncated: it shrank while being read");
            got += size_t(r);
        }
        return owned.data();
    };
    auto check = [&](uint32_t s, const char* data) {
        if (verify && checksum64(data, h.sections[s].length) != h.sections[s].checksum)
            checks.corrupt(std::string("section '") + kSectionNames[s] + "' checksum mismatch");
    };
    // Large sections: kept where they are (mapped) or owned.
    auto take_large = [&](uint32_t s, Buffer& dst) {
        const char* ptr = section_ptr(s, dst);
        check(s, ptr);
        if (map) dst.attach(map, const_cast<char*>(ptr), h.sections[s].length);
    };
    // Small sections: copied into vectors; their lengths are whole elements
    // (checked above for each, so the copy fills the vector exactly).
    auto take_small = [&](uint32_t s, auto& vec) {
        Buffer tmp;
        const char* ptr = section_ptr(s, tmp);
        check(s, ptr);
        using T = typename std::decay_t<decltype(vec)>::value_type;
        if (h.sections[s].length % sizeof(T)) checks.corrupt(std::string("section '") + kSectionNames[s] + "' has the wrong size");
        vec.resize(h.sections[s].length / sizeof(T));
        if (h.sections[s].length) std::memcpy(vec.data(), ptr, h.sections[s].length);
    };

    take_large(kData0, ix->data0_);
    take_large(kLabels, ix->labels_);
    take_small(kLevels, ix->levels_);
    take_small(kFlags, ix->flags_);
    take_small(kUpperOff, ix->upper_off_);
    take_small(kUpperPool, ix->upper_pool_);
    take_small(kQuantLo, ix->quant_.lo());
    take_small(kQuantStep, ix->quant_.step());
    take_small(kFree, ix->free_);
    // The originals stay while the quantizer may still retrain from them
    // (an empty index too: its first add trains it), or for rescoring.
    if (has_floats) take_large(kFloats, ix->floats_.buf);
    else if (quant_final && !keep_floats) ix->floats_.drop();
    {
        Buffer tmp;
        const char* ptr = section_ptr(kAttrNames, tmp);
        check(kAttrNames, ptr);
        const std::string names(ptr, h.sections[kAttrNames].length);
        size_t start = 0;
        while (start < names.size()) {
            const size_t end = names.find('\0', start);
            if (end == std::string::npos) checks.corrupt("attribute names are not NUL-terminated");
            ix->attrs_.names.push_back(names.substr(start, end - start));
            start = end + 1;
        }
        expect(kAttrValues, ix->attrs_.names.size() * 4, n);  // names.size() <= file size: no overflow
        std::vector<int32_t> values;
        take_small(kAttrValues, values);
        for (size_t a = 0; a < ix->attrs_.names.size(); ++a)
            ix->attrs_.cols.emplace_back(values.begin() + a * n, values.begin() + (a + 1) * n);
    }

    // 4. Structure, then the labels into the id map.
    checks.structure(*ix, verify);
    ix->capacity_ = n;
    ix->n_slots_ = n;
    ix->n_live_ = h.n_live;
    ix->quant_final_ = quant_final;
    ix->next_retrain_ = h.next_retrain;
    ix->next_auto_id_ = h.next_auto_id;
    ix->entry_ = h.entry;
    ix->max_level_ = h.max_level;
    ix->set_ef(h.ef ? size_t(h.ef) : kDefaultEf);
    ix->ids_.reserve(h.n_live);
    size_t live = 0;
    for (uint64_t s = 0; s < n; ++s)
        if (!(ix->flags_[s] & kDeleted)) {
            const uint64_t id = ix->label(s);
            if (id == kNoId) checks.corrupt("live slot " + std::to_string(s) + " has the padding id 2**64-1");
            if (live == h.n_live) checks.corrupt("more live slots than the header's live count");
            if (ix->ids_.find(id) != IdMap::kEmpty) checks.corrupt("id " + std::to_string(id) + " appears twice");
            ix->ids_.insert(id, uint32_t(s));
            ++live;
        }
    if (live != h.n_live) checks.corrupt("live count or ids do not match");
    return ix;
}

}  // namespace simsearch
