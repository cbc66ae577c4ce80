/*
 * tokens: a conservative count of the tokens a text costs an embedding
 * model, without the model's vocabulary.
 *
 * Models of the text-embedding-3 family use the byte-level BPE "cl100k".
 * Its pre-tokenizer cuts text into letter runs (a space or a punctuation
 * mark in front joins the run), digit groups of at most 3, punctuation
 * runs and whitespace runs; BPE then merges bytes inside each piece.  The
 * estimate follows the same cuts and charges each piece generously:
 *
 *   ASCII letters      a run of n letters costs ceil(n / 4): English words
 *                      of up to 4 letters are one token, longer ones rarely
 *                      more than one per 4 letters;
 *   ASCII digits       a run of n digits costs ceil(n / 3): cl100k cuts
 *                      numbers into groups of 1-3 digits, one token each
 *                      (exact);
 *   whitespace         a run of n bytes (space, tab, CR, LF, VT, FF) costs
 *                      ceil(n / 4); but a single space followed by anything
 *                      other than whitespace, a digit or the end costs 0:
 *                      cl100k joins it to the next word or mark;
 *   other ASCII        each byte (punctuation, controls) costs 1;
 *   non-ASCII          a 2-byte UTF-8 character costs 1, a 3- or 4-byte one
 *                      2 (Cyrillic, Greek, accented Latin: usually under 1;
 *                      CJK: usually 1-2); a byte that is not part of valid
 *                      UTF-8 costs 1.
 *
 * On ordinary text this is an upper bound of cl100k's count: by 0-50% on
 * the English sentences of tests/unit/test_tokens.c ("The quick brown fox
 * jumps over the lazy dog." is 10 tokens, estimated 13), by 100% on the
 * Japanese one; markdown with much punctuation costs more.  It
 * undercounts only strings that BPE handles badly, such as random letters
 * (base64, hashes), where real tokens can be 2-3 letters each.  Even then
 * it is never wrong by more than a bounded factor: every estimated token
 * covers at most 5 bytes (" abcd"), and a byte-level BPE never makes more
 * tokens than bytes, so a text estimated at E tokens has at most 5 E real
 * ones.  Chunks of at most 1638 estimated tokens therefore fit an 8191-
 * token model whatever their bytes.
 *
 * Subadditive over line joins: the estimate of a + "\n" + b is at most
 * estimate(a) + 1 + estimate(b), so a chunker can add up lines.
 *
 * Pure C, no allocation, linear in the length; the embedding service
 * stand-in (tools/embedserver.c) links this file too, so the limit it
 * enforces is the one the chunker bounds.
 */
#ifndef DP_TOKENS_H
#define DP_TOKENS_H

#include <stddef.h>

/* Estimated tokens of text[0..len) (any bytes; need not be NUL-terminated). */
size_t dp_tokens_estimate(const char *text, size_t len);

/* The longest prefix of text[0..len) whose estimate is at most max_tokens,
 * cut only at a UTF-8 character boundary: returns its length (0 when even
 * the first character costs more). */
size_t dp_tokens_prefix(const char *text, size_t len, size_t max_tokens);

#endif
