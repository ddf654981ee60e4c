import React from 'react';
import { fireEvent, render, screen } from '@testing-library/react';

import testAnswer from '../__fixtures__/test.json';
import record from '../__fixtures__/record.json';
import notFound from '../__fixtures__/error-not-found-record.json';
import { fakeOps } from '../testing/fakeOps';
import { TestConsole } from './TestConsole';

const ID = testAnswer.request_id;

describe('TestConsole', () => {
  it('runs a test prediction on the chosen model and traces it to its record', async () => {
    const { api, calls } = fakeOps({
      'POST /ops/test': { body: testAnswer },
      [`GET /ops/requests/${ID}`]: { body: record },
    });
    render(<TestConsole api={api} models={['llama3.2', 'qwen2.5:0.5b']} dialect="ollama" />);
    fireEvent.change(screen.getByLabelText('Model'), { target: { value: 'qwen2.5:0.5b' } });
    fireEvent.change(screen.getByLabelText('Prompt'), { target: { value: 'Hello?' } });
    fireEvent.click(screen.getByRole('button', { name: /Run test/ }));

    expect(await screen.findByTestId('test-output')).toHaveTextContent('Hello there, nice to meet!');
    expect(screen.getByTestId('test-request-id')).toHaveTextContent(ID);
    expect(screen.getByTestId('test-result')).toHaveTextContent('latency 182 ms');
    expect(screen.getByTestId('test-result')).toHaveTextContent('tokens 9 in / 12 out');
    expect(calls[0].body).toEqual({
      model: 'qwen2.5:0.5b',
      prompt: 'Hello?',
      stream: false,
      max_tokens: 64,
      dialect: 'ollama',
    });

    expect(await screen.findByTestId('record-request_id')).toHaveTextContent(ID);
    expect(screen.getByTestId('record-completion_tokens')).toHaveTextContent('12');
    expect(calls[1].url.pathname).toBe(`/ops/requests/${ID}`);
  });

  it('takes a typed model when the services list none, and shows a failed test', async () => {
    const failed = { ...testAnswer, ok: false, status: 404, output: '', error: 'model "nope" not found' };
    const { api, calls } = fakeOps({
      'POST /ops/test': { body: failed },
      [`GET /ops/requests/${ID}`]: { body: record },
    });
    render(<TestConsole api={api} models={[]} dialect="openai" />);
    const run = screen.getByRole('button', { name: /Run test/ });
    expect(run).toBeDisabled();
    fireEvent.change(screen.getByLabelText('Model'), { target: { value: 'nope' } });
    fireEvent.click(run);
    expect(await screen.findByTestId('test-output')).toHaveTextContent('Failed (404): model "nope" not found');
    expect(calls[0].body).toMatchObject({ model: 'nope', dialect: 'openai' });
  });

  it("looks up any request id and shows the API's answer for an unknown one", async () => {
    const { api } = fakeOps({ 'GET /ops/requests/nope': { status: 404, body: notFound } });
    render(<TestConsole api={api} models={['llama3.2']} dialect="ollama" />);
    fireEvent.change(screen.getByLabelText('Request id'), { target: { value: ' nope ' } });
    fireEvent.click(screen.getByRole('button', { name: 'Look up' }));
    expect(await screen.findByTestId('state-unknown')).toHaveTextContent('no request with id nope.');
  });

  it('shows the error of a refused test', async () => {
    const { api } = fakeOps({
      'POST /ops/test': { status: 401, body: { error: { type: 'unauthorized', message: 'token expired' } } },
    });
    render(<TestConsole api={api} models={['llama3.2']} dialect="ollama" />);
    fireEvent.click(screen.getByRole('button', { name: /Run test/ }));
    expect(await screen.findByTestId('state-unauthorised')).toHaveTextContent('token expired');
  });
});
