/*
 * The probe's output protocol: one JSON object per line, "VDRPROBE {...}\n", built in a
 * fixed buffer (a line that would overflow it is cut and marked, never written past the
 * buffer; the host ignores lines that do not parse). Also the CRC-32 (IEEE 802.3, the
 * polynomial crc32fast and zlib use) and the byte helpers the analysis shares.
 */
#include "probe.h"

#define LINE_MAX 3000u

static char line[LINE_MAX];
static u32 line_len;
static int line_overflow;

static void put(char c)
{
    if (line_len + 1 < LINE_MAX)
        line[line_len++] = c;
    else
        line_overflow = 1;
}

static void puts_raw(const char *s)
{
    while (*s)
        put(*s++);
}

static void put_hex_nibble(u32 v)
{
    put("0123456789abcdef"[v & 15]);
}

static void put_escaped_codepoint(u32 cp)
{
    if (cp == '"') {
        puts_raw("\\\"");
    } else if (cp == '\\') {
        puts_raw("\\\\");
    } else if (cp < 0x20 || cp == 0x7f) {
        puts_raw("\\u00");
        put_hex_nibble(cp >> 4);
        put_hex_nibble(cp);
    } else if (cp < 0x80) {
        put((char)cp);
    } else if (cp < 0x10000) {
        puts_raw("\\u");
        put_hex_nibble(cp >> 12);
        put_hex_nibble(cp >> 8);
        put_hex_nibble(cp >> 4);
        put_hex_nibble(cp);
    } else {
        u32 v = cp - 0x10000;
        put_escaped_codepoint(0xd800 + (v >> 10));
        put_escaped_codepoint(0xdc00 + (v & 0x3ff));
    }
}

static void put_key(const char *key)
{
    puts_raw(",\"");
    puts_raw(key);
    puts_raw("\":");
}

void jl_begin(const char *type)
{
    line_len = 0;
    line_overflow = 0;
    puts_raw("VDRPROBE {\"t\":\"");
    puts_raw(type);
    put('"');
}

void jl_str(const char *key, const char *ascii)
{
    put_key(key);
    put('"');
    while (*ascii)
        put_escaped_codepoint((u8)*ascii++);
    put('"');
}

/* Decodes one UTF-8 sequence at p (n bytes left); returns its length, 0 when invalid. */
static u32 utf8_decode(const u8 *p, u32 n, u32 *cp)
{
    u32 need, c = p[0], min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1; c &= 0x1f; min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2; c &= 0x0f; min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3; c &= 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if (need >= n)
        return 0;
    for (u32 i = 1; i <= need; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return need + 1;
}

void jl_text(const char *key, const u8 *bytes, u32 max_len)
{
    u32 n = 0;
    while (n < max_len && bytes[n])
        n++;
    put_key(key);
    put('"');
    for (u32 i = 0; i < n;) {
        u32 cp;
        u32 len = utf8_decode(bytes + i, n - i, &cp);
        if (len == 0) {
            put_escaped_codepoint(0xfffd);
            i++;
        } else {
            put_escaped_codepoint(cp);
            i += len;
        }
    }
    put('"');
}

void jl_utf16le(const char *key, const u8 *bytes, u32 max_units)
{
    put_key(key);
    put('"');
    for (u32 i = 0; i < max_units; i++) {
        u32 u = le16(bytes + 2 * i);
        if (u == 0)
            break;
        if (u >= 0xd800 && u <= 0xdbff && i + 1 < max_units) {
            u32 lo = le16(bytes + 2 * (i + 1));
            if (lo >= 0xdc00 && lo <= 0xdfff) {
                put_escaped_codepoint(0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00));
                i++;
                continue;
            }
        }
        if (u >= 0xd800 && u <= 0xdfff)
            u = 0xfffd;
        put_escaped_codepoint(u);
    }
    put('"');
}

void jl_u64(const char *key, u64 v)
{
    char digits[24];
    int n = 0;
    put_key(key);
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < 24);
    while (n)
        put(digits[--n]);
}

void jl_bool(const char *key, int v)
{
    put_key(key);
    puts_raw(v ? "true" : "false");
}

void jl_null(const char *key)
{
    put_key(key);
    puts_raw("null");
}

void jl_hex32(const char *key, u32 v)
{
    put_key(key);
    put('"');
    for (int s = 28; s >= 0; s -= 4)
        put_hex_nibble(v >> s);
    put('"');
}

void jl_end(void)
{
    if (line_overflow)
        puts_raw(",\"cut\":true");
    /* Room for "}\n" is kept by put()'s "+ 1" only for one byte: write them directly. */
    if (line_len + 2 > LINE_MAX)
        line_len = LINE_MAX - 2;
    line[line_len++] = '}';
    line[line_len++] = '\n';
    plat_write(line, line_len);
}

void emit_note(const char *what, u64 lba)
{
    jl_begin("note");
    jl_str("what", what);
    jl_u64("lba", lba);
    jl_end();
}

static u32 crc_table[256];
static int crc_ready;

u32 crc32_update(u32 crc, const void *data, u64 len)
{
    const u8 *p = data;
    if (!crc_ready) {
        for (u32 i = 0; i < 256; i++) {
            u32 c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
        crc_ready = 1;
    }
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

int bytes_eq(const void *a, const void *b, u32 n)
{
    const u8 *x = a, *y = b;
    for (u32 i = 0; i < n; i++)
        if (x[i] != y[i])
            return 0;
    return 1;
}

int all_zero(const u8 *p, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

u16 le16(const u8 *p) { return (u16)(p[0] | (p[1] << 8)); }
u32 le32(const u8 *p) { return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24); }
u64 le64(const u8 *p) { return (u64)le32(p) | ((u64)le32(p + 4) << 32); }
u32 be32(const u8 *p) { return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | (u32)p[3]; }
u64 be64(const u8 *p) { return ((u64)be32(p) << 32) | (u64)be32(p + 4); }

void hex_upper(char *out, u64 v, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        out[i] = "0123456789ABCDEF"[v & 15];
        v >>= 4;
    }
    out[digits] = 0;
}

/* A UUID stored as 16 bytes in order (ext4, XFS, btrfs, swap), in its lowercase text form. */
void format_uuid(char *out, const u8 *raw)
{
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[raw[i] >> 4];
        out[o++] = hex[raw[i] & 15];
    }
    out[o] = 0;
}
