// The index file: a fixed 512-byte header, then sections at 64-byte aligned
// offsets, each with its length and a 64-bit checksum in the header, and the
// header's own checksum last. Sections are the in-memory arrays byte for
// byte, so load(mmap=true) points the level-0 records, labels and float
// originals straight into the mapped file.
//
// Saving writes "<path>.tmp-<pid>", fsyncs it, renames it over <path> and
// fsyncs the directory: a reader sees the old file or the new one, never a
// mix. Loading checks magic, version, sizes and checksums before it trusts
// any count.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include "graph.hpp"

namespace simsearch {

// A file that cannot be read or written: becomes OSError in Python.
struct IOError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A file that is not a valid index: becomes ValueError in Python.
struct FormatError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

constexpr char kMagic[8] = {'S', 'I', 'M', 'S', 'I', 'D', 'X', '1'};
constexpr uint32_t kFormatVersion = 1;

enum Section : uint32_t {
    kData0 = 0, kLabels, kLevels, kFlags, kUpperOff, kUpperPool, kQuantLo, kQuantStep, kFree, kFloats,
    kAttrNames, kAttrValues, kNumSections
};
constexpr const char* kSectionNames[kNumSections] = {
    "level-0 records", "labels", "levels", "flags", "upper offsets", "upper links",
    "quantizer lo", "quantizer step", "free list", "float originals",
    "attribute names", "attribute values"};

struct SectionEntry {
    uint64_t offset;
    uint64_t length;
    uint64_t checksum;
};

struct FileHeader {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t metric;
    uint32_t dtype;  // 0 = int8 codes
    uint64_t dim;
    uint64_t dim_padded;
    uint64_t M;
    uint64_t ef_construction;
    uint64_t rec_size;
    uint64_t n_slots;
    uint64_t n_live;
    uint64_t seed;
    uint64_t train_limit;
    uint64_t next_retrain;
    uint64_t next_auto_id;
    uint32_t entry;
    int32_t max_level;
    uint32_t flags;  // bit 0: keep_floats, bit 1: quantizer final, bit 2: floats section present
    uint32_t n_sections;
    SectionEntry sections[kNumSections];
    uint8_t reserved[88];
    uint64_t header_checksum;  // over every byte before it
};
static_assert(sizeof(SectionEntry) == 24, "section entry layout");
static_assert(sizeof(FileHeader) == 512, "the index file header is 512 bytes");
static_assert(offsetof(FileHeader, sections) == 128, "header layout is pinned");

// 64-bit checksum, four independent lanes of multiply-rotate over 8-byte
// words for speed (several GB/s), folded at the end; not cryptographic.
inline uint64_t checksum64(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    constexpr uint64_t k1 = 0x9E3779B185EBCA87ULL, k2 = 0xC2B2AE3D27D4EB4FULL;
    uint64_t h[4] = {k1, k2, k1 ^ 0x1234567ULL, k2 ^ 0x89ABCDEFULL};
    auto mix = [&](uint64_t acc, uint64_t w) {
        acc ^= w * k2;
        acc = (acc << 31) | (acc >> 33);
        return acc * k1;
    };
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        std::memcpy(w, p + i, 32);
        for (int j = 0; j < 4; ++j) h[j] = mix(h[j], w[j]);
    }
    uint64_t out = uint64_t(n) * k1;
    for (int j = 0; j < 4; ++j) out = mix(out, h[j]);
    for (; i < n; ++i) out = mix(out, p[i]);
    out ^= out >> 29;
    out *= k2;
    out ^= out >> 32;
    return out;
}

class FileWriter {
public:
    explicit FileWriter(const std::string& path) : path_(path) {
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) fail("cannot create");
    }
    ~FileWriter() {
        if (fd_ >= 0) ::close(fd_);
    }
    void pwrite_all(const void* data, size_t n, uint64_t offset) {
        const char* p = static_cast<const char*>(data);
        while (n > 0) {
            const ssize_t w = ::pwrite(fd_, p, std::min<size_t>(n, size_t(1) << 30), off_t(offset));
            if (w < 0) {
                if (errno == EINTR) continue;
                fail("cannot write");
            }
            p += w;
            n -= size_t(w);
            offset += uint64_t(w);
        }
    }
    void sync_and_close() {
        if (::fsync(fd_) != 0) fail("cannot fsync");
        if (::close(fd_) != 0) {
            fd_ = -1;
            fail("cannot close");
        }
        fd_ = -1;
    }

private:
    [[noreturn]] void fail(const char* what) {
        throw IOError(std::string(what) + " '" + path_ + "': " + std::strerror(errno));
    }
    std::string path_;
    int fd_ = -1;
};

inline void fsync_parent_dir(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

struct IndexFile {
    static void save(const HnswIndex& ix, const std::string& path) {
        std::shared_lock<std::shared_mutex> r(ix.rw_);
        const size_t n = ix.n_slots_;
        // attributes: names joined by NUL; values one int32 column per name
        std::string names;
        for (const std::string& a : ix.attr_names_) names += a + '\0';
        std::vector<int32_t> attr_values;
        attr_values.reserve(ix.attr_cols_.size() * n);
        for (const auto& col : ix.attr_cols_) attr_values.insert(attr_values.end(), col.begin(), col.begin() + n);
        struct Src {
            const void* data;
            size_t len;
        };
        Src src[kNumSections] = {
            {ix.data0_.data(), n * ix.rec_size_},
            {ix.labels_.data(), n * 8},
            {ix.levels_.data(), n},
            {ix.flags_.data(), n},
            {ix.upper_off_.data(), n * 4},
            {ix.upper_pool_.data(), ix.upper_pool_.size() * 4},
            {ix.quant_.lo().data(), ix.p_.dim * 4},
            {ix.quant_.step().data(), ix.p_.dim * 4},
            {ix.free_.data(), ix.free_.size() * 4},
            {ix.has_floats() ? ix.floats_.buf.data() : nullptr, ix.has_floats() ? n * ix.p_.dim * 4 : 0},
            {names.data(), names.size()},
            {attr_values.data(), attr_values.size() * 4},
        };
        FileHeader h;
        std::memset(&h, 0, sizeof h);
        std::memcpy(h.magic, kMagic, 8);
        h.version = kFormatVersion;
        h.header_size = sizeof(FileHeader);
        h.metric = uint32_t(ix.p_.metric);
        h.dtype = 0;
        h.dim = ix.p_.dim;
        h.dim_padded = ix.dim_padded_;
        h.M = ix.p_.M;
        h.ef_construction = ix.p_.ef_construction;
        h.rec_size = ix.rec_size_;
        h.n_slots = n;
        h.n_live = ix.n_live_;
        h.seed = ix.p_.seed;
        h.train_limit = ix.p_.train_limit;
        h.next_retrain = ix.next_retrain_;
        h.next_auto_id = ix.next_auto_id_;
        h.entry = ix.entry_;
        h.max_level = ix.max_level_;
        h.flags = (ix.p_.keep_floats ? 1u : 0u) | (ix.quant_final_ ? 2u : 0u) | (ix.has_floats() ? 4u : 0u);
        h.n_sections = kNumSections;
        uint64_t off = sizeof(FileHeader);
        for (uint32_t i = 0; i < kNumSections; ++i) {
            if (src[i].len == 0) {  // empty: no bytes in the file, so no offset past its end
                h.sections[i] = {0, 0, checksum64(src[i].data, 0)};
                continue;
            }
            off = (off + 63) & ~uint64_t(63);
            h.sections[i] = {off, src[i].len, checksum64(src[i].data, src[i].len)};
            off += src[i].len;
        }
        h.header_checksum = checksum64(&h, offsetof(FileHeader, header_checksum));

        const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
        try {
            FileWriter w(tmp);
            for (uint32_t i = 0; i < kNumSections; ++i)
                if (src[i].len) w.pwrite_all(src[i].data, src[i].len, h.sections[i].offset);
            w.pwrite_all(&h, sizeof h, 0);
            w.sync_and_close();
            if (::rename(tmp.c_str(), path.c_str()) != 0)
                throw IOError("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(errno));
        } catch (...) {
            ::unlink(tmp.c_str());
            throw;
        }
        fsync_parent_dir(path);
    }

    static std::unique_ptr<HnswIndex> load(const std::string& path, bool use_mmap, bool verify, const std::string& isa) {
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

        FileHeader h;
        if (file_size < 8 || ::pread(fd, &h, std::min<uint64_t>(sizeof h, file_size), 0) < 8 ||
            std::memcmp(h.magic, kMagic, 8) != 0)
            throw FormatError("'" + path + "' is not a simsearch index file (bad magic)");
        if (file_size < sizeof h) throw FormatError("'" + path + "' is truncated: header incomplete");
        if (h.version > kFormatVersion)
            throw FormatError("'" + path + "' has format version " + std::to_string(h.version) +
                              ", newer than this simsearch reads (" + std::to_string(kFormatVersion) + "): upgrade simsearch");
        if (h.header_size != sizeof h || h.n_sections != kNumSections)
            throw FormatError("'" + path + "' has an unexpected header layout");
        if (checksum64(&h, offsetof(FileHeader, header_checksum)) != h.header_checksum)
            throw FormatError("'" + path + "' is corrupt: header checksum mismatch");
        if (h.metric > 2 || h.dtype != 0) throw FormatError("'" + path + "' has an unknown metric or dtype");
        for (uint32_t i = 0; i < kNumSections; ++i) {
            const SectionEntry& e = h.sections[i];
            if (e.offset > file_size || e.length > file_size - e.offset)
                throw FormatError("'" + path + "' is truncated: section '" + kSectionNames[i] + "' ends past the end of the file");
        }

        IndexParams p;
        p.dim = h.dim;
        p.metric = Metric(h.metric);
        p.M = h.M;
        p.ef_construction = h.ef_construction;
        p.keep_floats = h.flags & 1u;
        p.seed = h.seed;
        p.train_limit = h.train_limit;
        auto ix = std::make_unique<HnswIndex>(p, isa);
        const uint64_t n = h.n_slots;
        const bool has_floats = h.flags & 4u;
        auto expect = [&](uint32_t s, uint64_t len) {
            if (h.sections[s].length != len)
                throw FormatError("'" + path + "' is corrupt: section '" + kSectionNames[s] + "' has the wrong size");
        };
        if (ix->rec_size_ != h.rec_size || ix->dim_padded_ != h.dim_padded)
            throw FormatError("'" + path + "' has a record layout this build does not read");
        expect(kData0, n * h.rec_size);
        expect(kLabels, n * 8);
        expect(kLevels, n);
        expect(kFlags, n);
        expect(kUpperOff, n * 4);
        expect(kQuantLo, h.dim * 4);
        expect(kQuantStep, h.dim * 4);
        expect(kFloats, has_floats ? n * h.dim * 4 : 0);
        if (h.n_live > n || n >= kNone) throw FormatError("'" + path + "' is corrupt: counts out of range");

        // Bring the sections in: mapped, or read into owned memory.
        std::shared_ptr<MappedFile> map;
        if (use_mmap && file_size > 0) {
            void* base = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
            if (base == MAP_FAILED) throw IOError("cannot mmap '" + path + "': " + std::strerror(errno));
            map = std::make_shared<MappedFile>(base, file_size);
        }
        auto section_ptr = [&](uint32_t s, Buffer& owned) -> const char* {
            const SectionEntry& e = h.sections[s];
            if (map) return static_cast<const char*>(map->base) + e.offset;
            owned.resize(e.length);
            size_t got = 0;
            while (got < e.length) {
                const ssize_t r = ::pread(fd, owned.data() + got, e.length - got, off_t(e.offset + got));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) throw IOError("cannot read '" + path + "': " + std::strerror(errno));
                got += size_t(r);
            }
            return owned.data();
        };
        auto check = [&](uint32_t s, const char* data) {
            if (verify && checksum64(data, h.sections[s].length) != h.sections[s].checksum)
                throw FormatError("'" + path + "' is corrupt: section '" + kSectionNames[s] + "' checksum mismatch");
        };
        // Large sections: kept where they are (mapped) or owned.
        auto take_large = [&](uint32_t s, Buffer& dst) {
            const char* ptr = section_ptr(s, dst);
            check(s, ptr);
            if (map) dst.attach(map, const_cast<char*>(ptr), h.sections[s].length);
        };
        // Small sections: always copied into vectors.
        auto take_small = [&](uint32_t s, auto& vec) {
            Buffer tmp;
            const char* ptr = section_ptr(s, tmp);
            check(s, ptr);
            using T = typename std::decay_t<decltype(vec)>::value_type;
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
        if (has_floats) take_large(kFloats, ix->floats_.buf);
        else ix->floats_.drop();
        {
            Buffer tmp;
            const char* ptr = section_ptr(kAttrNames, tmp);
            check(kAttrNames, ptr);
            const std::string names(ptr, h.sections[kAttrNames].length);
            size_t start = 0;
            while (start < names.size()) {
                const size_t end = names.find('\0', start);
                if (end == std::string::npos) throw FormatError("'" + path + "' is corrupt: attribute names");
                ix->attr_names_.push_back(names.substr(start, end - start));
                start = end + 1;
            }
            expect(kAttrValues, ix->attr_names_.size() * n * 4);
            std::vector<int32_t> values;
            take_small(kAttrValues, values);
            for (size_t a = 0; a < ix->attr_names_.size(); ++a)
                ix->attr_cols_.emplace_back(values.begin() + a * n, values.begin() + (a + 1) * n);
        }

        // Cross-checks that keep a crafted file from sending reads out of bounds.
        for (uint64_t s = 0; s < n; ++s) {
            if (ix->levels_[s] > kMaxLevel) throw FormatError("'" + path + "' is corrupt: level out of range");
            if (ix->levels_[s] > 0 &&
                (ix->upper_off_[s] == kNone ||
                 uint64_t(ix->upper_off_[s]) + uint64_t(ix->levels_[s]) * (p.M + 1) > ix->upper_pool_.size()))
                throw FormatError("'" + path + "' is corrupt: upper links out of range");
        }
        for (uint32_t s : ix->free_)
            if (s >= n) throw FormatError("'" + path + "' is corrupt: free list out of range");
        if (h.entry != kNone && h.entry >= n) throw FormatError("'" + path + "' is corrupt: entry point out of range");
        if (verify) {
            // Every link must name a slot: a crafted file must not steer reads out of bounds.
            for (uint64_t s = 0; s < n; ++s)
                for (int l = ix->levels_[s]; l >= 0; --l) {
                    const uint32_t* ll = ix->links(uint32_t(s), l);
                    if (ll[0] > ix->max_links(l)) throw FormatError("'" + path + "' is corrupt: link count out of range");
                    for (uint32_t j = 1; j <= ll[0]; ++j)
                        if (ll[j] >= n) throw FormatError("'" + path + "' is corrupt: link out of range");
                }
        }

        ix->capacity_ = n;
        ix->n_slots_ = n;
        ix->n_live_ = h.n_live;
        ix->quant_final_ = h.flags & 2u;
        ix->next_retrain_ = h.next_retrain;
        ix->next_auto_id_ = h.next_auto_id;
        ix->entry_ = h.entry;
        ix->max_level_ = h.max_level;
        ix->ids_.reserve(h.n_live);
        size_t live = 0;
        for (uint64_t s = 0; s < n; ++s)
            if (!(ix->flags_[s] & kDeleted)) {
                if (ix->ids_.find(ix->label(s)) != IdMap::kEmpty)
                    throw FormatError("'" + path + "' is corrupt: id " + std::to_string(ix->label(s)) + " appears twice");
                ix->ids_.insert(ix->label(s), uint32_t(s));
                ++live;
            }
        if (live != h.n_live || ix->ids_.size() != live)
            throw FormatError("'" + path + "' is corrupt: live count or ids do not match");
        return ix;
    }
};

inline void HnswIndex::save(const std::string& path) const { IndexFile::save(*this, path); }
inline std::unique_ptr<HnswIndex> HnswIndex::load(const std::string& path, bool mmap, bool verify, const std::string& isa) {
    return IndexFile::load(path, mmap, verify, isa);
}

}  // namespace simsearch
